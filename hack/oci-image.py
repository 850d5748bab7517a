#!/usr/bin/env python3
"""Writes an OCI image archive for one binary, pulling nothing.

    hack/oci-image.py --ref REF --binary PATH --out FILE.tar [--uid N]

Two layers: a runtime base made from the binary's own shared libraries (as `ldd` finds them
on this machine), the system CA roots and a passwd/group naming the non-root user; then the
binary, stripped of debug info, at /usr/local/bin. No shell, no package manager. Archives are
reproducible (fixed mtimes and owners), so images sharing a base share its digest.
`controlplane.sh load`, `ctr images import`, `docker load` and `kind load image-archive` read
them.
"""

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def shared_libraries(binary):
    """Absolute paths of the libraries the dynamic loader maps for `binary`, loader included."""
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    if not libs:
        sys.exit(f"oci-image: ldd found no libraries for {binary} (static binaries need none: not supported here)")
    return libs


def info(name, mode, kind=tarfile.REGTYPE, size=0):
    i = tarfile.TarInfo(name)
    i.type, i.mode, i.size, i.mtime, i.uid, i.gid, i.uname, i.gname = kind, mode, size, 0, 0, 0, "", ""
    return i


def layer(entries, owned=(), uid=0):
    """entries: (path in image, bytes or None for a directory, mode); directories in `owned`
    belong to `uid`. Returns the tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for path, data, mode in entries:
            if data is None:
                i = info(path, mode, tarfile.DIRTYPE)
                if path in owned:
                    i.uid = i.gid = uid
                t.addfile(i)
            else:
                t.addfile(info(path, mode, size=len(data)), io.BytesIO(data))
    return buf.getvalue()


def parents(path):
    parts = path.strip("/").split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def tree(files):
    """files: {path: (bytes, mode)} -> entries with every parent directory first, sorted."""
    dirs = sorted({d for p in files for d in parents(p)})
    entries = [(d, None, 0o755) for d in dirs]
    entries += [(p.strip("/"), data, mode) for p, (data, mode) in sorted(files.items())]
    return entries


def read(path):
    with open(path, "rb") as f:
        return f.read()


def base_layer(binary, uid):
    files = {}
    for lib in shared_libraries(binary):
        real = os.path.realpath(lib)
        files[lib] = (read(real), 0o755)
    files[CA_BUNDLE] = (read(CA_BUNDLE), 0o644)
    files["/etc/passwd"] = (f"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{uid}:{uid}:nonroot:/home/nonroot:/sbin/nologin\n".encode(), 0o644)
    files["/etc/group"] = (f"root:x:0:\nnonroot:x:{uid}:\n".encode(), 0o644)
    entries = tree(files)
    entries.append(("tmp", None, 0o1777))
    entries.append(("home", None, 0o755))
    entries.append(("home/nonroot", None, 0o700))
    return layer(entries, owned=("home/nonroot",), uid=uid)


def stripped(binary):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "bin")
        subprocess.run(["objcopy", "--strip-debug", binary, out], check=True)
        return read(out)


def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", required=True, help="image name and tag, e.g. ghcr.io/sovereign-cloud/sovereign-operator:0.1.0")
    p.add_argument("--binary", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--uid", type=int, default=65532)
    a = p.parse_args()

    name = os.path.basename(a.binary)
    layers = [base_layer(a.binary, a.uid), layer(tree({f"/usr/local/bin/{name}": (stripped(a.binary), 0o755)}))]
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {
            "User": f"{a.uid}:{a.uid}",
            "Entrypoint": [f"/usr/local/bin/{name}"],
            "Env": ["PATH=/usr/local/bin", "SSL_CERT_FILE=" + CA_BUNDLE],
            "WorkingDir": "/home/nonroot",
            "Labels": {"org.opencontainers.image.source": "https://github.com/sovereign-cloud/sovereign"},
        },
        "rootfs": {"type": "layers", "diff_ids": [digest(l) for l in layers]},
        "history": [{"created_by": "hack/oci-image.py: shared libraries, CA roots, passwd"},
                    {"created_by": f"hack/oci-image.py: {name}"}],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(l), "size": len(l)} for l in layers],
    }, sort_keys=True).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": a.ref, "io.containerd.image.name": a.ref}}]}).encode()
    # docker load reads manifest.json (the docker-archive form) beside the OCI layout.
    docker = json.dumps([{"Config": "blobs/sha256/" + digest(config)[7:], "RepoTags": [a.ref],
                          "Layers": ["blobs/sha256/" + digest(l)[7:] for l in layers]}]).encode()

    with tarfile.open(a.out, "w") as t:
        def add(path, data):
            t.addfile(info(path, 0o644, size=len(data)), io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        add("manifest.json", docker)
        for b in layers + [config, manifest]:
            add("blobs/sha256/" + digest(b)[7:], b)
    size = sum(len(l) for l in layers)
    print(f"{a.ref}\t{a.out}\t{size / 1e6:.1f} MB\tlayers {' '.join(f'{len(l) / 1e6:.1f}' for l in layers)} MB\tuser {a.uid}\t{digest(manifest)}")


if __name__ == "__main__":
    main()
