"""Makes PyPI's CUDA torch wheel import on a CPU without the ~3 GB of NVIDIA libraries.

usage: python cpu_torch.py        (run with the environment's own python, after
                                   `pip install --no-deps torch nvidia-cuda-runtime-cu12 ...`)

PyPI's torch 2.9.0 for Linux x86-64 is the CUDA build: `import torch` loads libtorch_cuda.so,
which links cuBLAS, cuDNN, cuFFT, NCCL, ... (the nvidia-* wheels). A CPU never calls them: with
no GPU, torch asks the CUDA runtime (libcudart, which is installed) for devices, gets none, and
runs everything on libtorch_cpu. So each missing library is replaced by a stand-in with the
same soname that exports the symbols torch's libraries import from it (same symbol versions),
each a function returning 0. This is the Python twin of the empty libtorch.so stand-in that
`cargo xtask setup-libtorch` builds. Needs `nm`, `readelf` (binutils) and a C compiler (`cc`).
"""
import glob
import os
import re
import subprocess
import sys
import sysconfig
from collections import defaultdict

SITE = sysconfig.get_paths()["purelib"]
LIB = os.path.join(SITE, "torch", "lib")
# The libraries `import torch` loads (the others are opened on first CUDA use only).
LOADED = [
    "libtorch_python.so",
    "libtorch.so",
    "libtorch_cuda.so",
    "libc10_cuda.so",
    "libtorch_nvshmem.so",
    "libtorch_global_deps.so",
]
SYSTEM_VERSION = re.compile(r"(GLIBC|GLIBCXX|CXXABI|GCC)_")


def run(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def symbols(path, which):
    return [line.split()[-1] for line in run("nm", "-D", which, path).splitlines() if line.strip()]


def needed(path):
    return re.findall(r"\(NEEDED\).*\[(.*)\]", run("readelf", "-d", path))


def main():
    present = {
        os.path.basename(p): p
        for p in glob.glob(os.path.join(LIB, "*.so*"))
        + glob.glob(os.path.join(SITE, "nvidia", "*", "lib", "*.so*"))
    }
    defined = {s.split("@")[0] for p in present.values() for s in symbols(p, "--defined-only")}
    missing, wanted = set(), set()
    for name in LOADED:
        path = os.path.join(LIB, name)
        missing |= {
            n for n in needed(path) if n.startswith(("libcu", "libnv", "libnccl")) and n not in present
        }
        for sym in symbols(path, "--undefined-only"):
            base, _, version = sym.partition("@")
            if base in defined or SYSTEM_VERSION.match(version):
                continue
            if base.startswith(("Py", "_Py", "_ITM_", "__gmon_start__")):
                continue  # the interpreter's, and weak hooks nobody defines
            wanted.add((base, version))
    if not missing:
        print("cpu_torch: no NVIDIA library missing, nothing to do")
        return
    build(sorted(missing), wanted)


def owner(version, missing):
    """The library a symbol version belongs to: NVIDIA names versions after the soname."""
    if not version:
        return missing[0]  # unversioned symbols resolve from any loaded library
    for soname in missing:
        if soname == version or version.lower() in soname.lower():
            return soname
    sys.exit(f"cpu_torch: no missing library matches symbol version {version}")


def build(missing, wanted):
    per_lib = defaultdict(lambda: defaultdict(list))
    for base, version in wanted:
        per_lib[owner(version, missing)][version].append(base)
    work = os.path.join(LIB, ".cpu-stubs")
    os.makedirs(work, exist_ok=True)
    for soname in missing:
        asm, script = [".text"], []
        for version, names in sorted(per_lib[soname].items()):
            for n in sorted(names):
                asm += [f".globl {n}", f".type {n},@function", f"{n}:", "xor %eax,%eax", "ret"]
            if version:
                script.append(f"{version} {{ global: {'; '.join(sorted(names))}; }};")
        source = os.path.join(work, soname + ".s")
        with open(source, "w") as f:
            f.write("\n".join(asm) + "\n")
        cmd = [os.environ.get("CC", "cc"), "-shared", "-fPIC", "-nostdlib", f"-Wl,-soname,{soname}"]
        if script:
            version_script = os.path.join(work, soname + ".map")
            with open(version_script, "w") as f:
                f.write("\n".join(script) + "\n")
            cmd.append(f"-Wl,--version-script={version_script}")
        subprocess.run(cmd + ["-o", os.path.join(LIB, soname), source], check=True)
    print(f"cpu_torch: {len(missing)} CUDA libraries replaced by stand-ins: {' '.join(missing)}")


if __name__ == "__main__":
    main()
