#!/usr/bin/env python3
"""Checks deploy/kserve/*.yaml against KServe's own types, and against fffserve and the Containerfile.

No package on PyPI ships KServe's CRD schemas (kubernetes-validate carries only the built-in kinds;
the `kserve` SDK carries no schema file), so the schema used is the one the `kserve` SDK is
generated from, as it ships it: every model class (V1beta1InferenceService, V1alpha1ServingRuntime,
... and the Kubernetes client's V1Container, V1ResourceRequirements, ... that they embed) lists
its fields' JSON names (`attribute_map`) and types (`openapi_types`). Each manifest is walked
against those: every key must be a field of its class (the SDK's own deserialisation would drop an
unknown key silently, so a misspelt `minReplica` would go unnoticed), every value must have the
field's type, and each object is built through the class's constructor, whose setters refuse
missing required fields.

The Kubernetes objects inside (V1Container, V1ObjectMeta, V1ResourceRequirements, ...) are also
validated by the Kubernetes client's own pydantic models (strict types, no extra fields).

Then what the types cannot tell:
- the InferenceService's model format and runtime are the ServingRuntime's, with protocol v2;
- the runtime's container is `kserve-container`, its port is the Containerfile's --http-port, and
  its args are flags fffserve has (from `fffserve --help` when the binary is found, else from the
  flag table of server/README.md), none of them repeating one the ENTRYPOINT already sets;
- --threads is at most the CPU limit; resource quantities are Kubernetes quantities;
- replicas, scale metric and target, containerConcurrency and storageUri make sense;
- probes use fffserve's health endpoints.

Usage: python deploy/check.py [--fffserve PATH]       (needs `pip install kserve`; exit 1 on errors)
"""

import argparse
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

try:
    import kserve.models as kserve_models
    import kubernetes.client.models as k8s_models
    from kserve.configuration import Configuration as KserveConfiguration
    from kubernetes.client import Configuration as K8sConfiguration
except ImportError as e:  # pragma: no cover
    sys.exit(f"deploy/check.py needs the kserve SDK (pip install kserve): {e}")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KINDS = {
    # kind: (apiVersion, the SDK's class)
    "ServingRuntime": ("serving.kserve.io/v1alpha1", "V1alpha1ServingRuntime"),
    "ClusterServingRuntime": ("serving.kserve.io/v1alpha1", "V1alpha1ClusterServingRuntime"),
    "InferenceService": ("serving.kserve.io/v1beta1", "V1beta1InferenceService"),
}
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float)}
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")

errors = []


def error(path, message):
    errors.append(f"{path}: {message}")


def model_class(name):
    for module in (kserve_models, k8s_models):
        klass = getattr(module, name, None)
        if klass is not None:
            return klass
    return None


def build(value, type_name, path):
    """Checks value against the SDK type type_name; returns the SDK object (or the value)."""
    if value is None:
        return None
    # The kserve SDK writes list[X] and dict(str, X); the Kubernetes client's newer models List[X]
    # and Dict[str, X].
    m = re.fullmatch(r"(?:list|List)\[(.*)\]", type_name)
    if m:
        if not isinstance(value, list):
            error(path, f"expected a list ({type_name}), got {type(value).__name__}")
            return None
        return [build(v, m.group(1), f"{path}[{i}]") for i, v in enumerate(value)]
    m = re.fullmatch(r"dict\(([^,]*), (.*)\)", type_name) or re.fullmatch(r"Dict\[([^,]*), (.*)\]", type_name)
    if m:
        if not isinstance(value, dict):
            error(path, f"expected a mapping ({type_name}), got {type(value).__name__}")
            return None
        return {k: build(v, m.group(2), f"{path}.{k}") for k, v in value.items()}
    if type_name == "object":
        return value  # IntOrString, Quantity and free-form fields: the types say no more
    if type_name in ("datetime", "date"):
        if not isinstance(value, str):
            error(path, f"expected a {type_name} string, got {type(value).__name__}")
        return value
    if type_name in PRIMITIVES:
        want = PRIMITIVES[type_name]
        if isinstance(value, bool) and type_name != "bool":
            error(path, f"expected {type_name}, got a boolean")
        elif not isinstance(value, want):
            error(path, f"expected {type_name}, got {type(value).__name__} {value!r}")
        return value
    klass = model_class(type_name)
    if klass is None:
        error(path, f"the SDK has no type {type_name}")
        return value
    if not isinstance(value, dict):
        error(path, f"expected an object ({type_name}), got {type(value).__name__}")
        return None
    if hasattr(klass, "model_validate"):
        # The Kubernetes client's models are pydantic models with strict types and no extra fields:
        # their own validation of the manifest's mapping is the check (one line per problem).
        try:
            return klass.model_validate(value)
        except Exception as e:  # pydantic.ValidationError
            if not hasattr(e, "errors"):
                raise
            for err in e.errors():
                loc = ".".join(str(x) for x in err["loc"])
                error(f"{path}.{loc}", f"{err['msg']} (got {err.get('input')!r}; {type_name})")
            return None
    by_json = {json_name: attr for attr, json_name in klass.attribute_map.items()}
    kwargs = {}
    for key, v in value.items():
        attr = by_json.get(key)
        if attr is None:
            near = difflib.get_close_matches(key, by_json, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            error(f"{path}.{key}", f"not a field of {type_name}{hint}")
            continue
        kwargs[attr] = build(v, klass.openapi_types[attr], f"{path}.{key}")
    # The constructor runs the setters, which refuse missing required fields and bad enum values.
    config = (KserveConfiguration if klass.__module__.startswith("kserve") else K8sConfiguration)()
    config.client_side_validation = True
    try:
        return klass(local_vars_configuration=config, **kwargs)
    except (ValueError, TypeError) as e:
        error(path, f"{type_name}: {e}")
        return None


def check_kind(doc, path):
    kind = doc.get("kind")
    if kind not in KINDS:
        error(path, f"kind {kind!r} is not one of {sorted(KINDS)}")
        return None
    api_version, class_name = KINDS[kind]
    if doc.get("apiVersion") != api_version:
        error(path, f"{kind} has apiVersion {api_version}, not {doc.get('apiVersion')!r}")
    return build(doc, class_name, f"{path}:{kind}")


def quantity(path, value):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not QUANTITY.match(str(value)):
        error(path, f"{value!r} is not a Kubernetes quantity")
        return None
    text = str(value)
    for suffix, scale in (("m", 1e-3), ("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("k", 1e3), ("M", 1e6), ("G", 1e9)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


def check_resources(res, path):
    if not res:
        error(path, "no resources: set CPU requests and limits, which --threads and scaling rely on")
        return None
    for part in ("requests", "limits"):
        for name, v in (res.get(part) or {}).items():
            quantity(f"{path}.{part}.{name}", v)
    for name in ("cpu", "memory"):
        req = quantity(f"{path}.requests.{name}", (res.get("requests") or {}).get(name, "0"))
        lim = (res.get("limits") or {}).get(name)
        if lim is not None:
            lim = quantity(f"{path}.limits.{name}", lim)
            if req is not None and lim is not None and req > lim:
                error(path, f"{name} request {req} is above its limit {lim}")
    cpu = (res.get("limits") or {}).get("cpu")
    return quantity(f"{path}.limits.cpu", cpu) if cpu is not None else None


def entrypoint():
    text = (DEPLOY / "Containerfile").read_text()
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    if not m:
        error("deploy/Containerfile", "no ENTRYPOINT in exec form")
        return []
    return json.loads(m.group(1))


def fffserve_flags(binary):
    """fffserve's long flags: from its --help when the binary runs, else from server/README.md."""
    if binary:
        try:
            out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30, check=True).stdout
            return set(re.findall(r"(--[a-z][a-z0-9-]*)", out)) - {"--help", "--version"}, f"`{binary} --help`"
        except (OSError, subprocess.SubprocessError) as e:
            print(f"note: {binary} --help failed ({e}); using server/README.md's flag table")
    readme = (ROOT / "server" / "README.md").read_text()
    return set(re.findall(r"^\| `(--[a-z][a-z0-9-]*)", readme, re.M)), "server/README.md"


def flag_values(args, path):
    """Pairs of (flag, value) from an argument list of `--flag value` and `--flag=value` items."""
    pairs, i = [], 0
    while i < len(args):
        a = str(args[i])
        if not a.startswith("--"):
            error(path, f"argument {a!r} is not a flag")
            i += 1
            continue
        if "=" in a:
            pairs.append(tuple(a.split("=", 1)))
            i += 1
        else:
            pairs.append((a, str(args[i + 1]) if i + 1 < len(args) else None))
            i += 2
    return pairs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_bin = os.environ.get("FFFSERVE") or str(ROOT / "target" / "release" / "fffserve")
    ap.add_argument("--fffserve", default=default_bin, help="fffserve binary whose --help lists its flags")
    opts = ap.parse_args()
    binary = opts.fffserve if Path(opts.fffserve).is_file() else shutil.which("fffserve")

    docs = {}
    for name in ("servingruntime.yaml", "inferenceservice.yaml"):
        path = f"deploy/kserve/{name}"
        for i, doc in enumerate(yaml.safe_load_all((DEPLOY / "kserve" / name).read_text())):
            if doc is None:
                continue
            obj = check_kind(doc, f"{path}#{i}")
            docs[doc.get("kind")] = (doc, obj, path)
    runtime, isvc = docs.get("ServingRuntime"), docs.get("InferenceService")
    if not runtime or not isvc:
        error("deploy/kserve", "expected one ServingRuntime and one InferenceService")
        return report(None)

    # The runtime against the image and the server.
    rt, _, rt_path = runtime
    spec = rt.get("spec", {})
    formats = {f.get("name"): f for f in spec.get("supportedModelFormats", [])}
    if "fff" not in formats:
        error(rt_path, "supportedModelFormats has no `fff`")
    if "v2" not in spec.get("protocolVersions", []):
        error(rt_path, "protocolVersions lacks v2 (fffserve speaks the Open Inference Protocol v2)")
    containers = spec.get("containers", [])
    if len(containers) != 1 or containers[0].get("name") != "kserve-container":
        error(rt_path, "expected one container named kserve-container (the name KServe looks for)")
    entry = entrypoint()
    entry_flags = dict(flag_values(entry[1:], "deploy/Containerfile ENTRYPOINT"))
    if entry[:1] != ["fffserve"] or entry_flags.get("--model-repository") != "/mnt/models":
        error("deploy/Containerfile", "ENTRYPOINT must run fffserve on /mnt/models (where KServe puts storageUri)")
    if entry_flags.get("--host") != "0.0.0.0":
        error("deploy/Containerfile", "ENTRYPOINT must listen on 0.0.0.0 to be reachable in a pod")
    known, source = fffserve_flags(binary)
    for c in containers:
        cpath = f"{rt_path}:containers.{c.get('name')}"
        ports = [p.get("containerPort") for p in c.get("ports", [])]
        if ports != [int(entry_flags.get("--http-port", 8000))]:
            error(cpath, f"ports {ports} are not the ENTRYPOINT's --http-port {entry_flags.get('--http-port')}")
        args = flag_values(c.get("args", []), cpath + ".args")
        seen = set()
        for flag, value in args:
            if flag not in known:
                error(cpath, f"fffserve has no flag {flag} (per {source})")
            if flag in entry_flags:
                error(cpath, f"{flag} is already set by the ENTRYPOINT; clap refuses it twice")
            if flag in seen:
                error(cpath, f"{flag} given twice")
            seen.add(flag)
            if value is None or value.startswith("--"):
                error(cpath, f"{flag} has no value")
        cpu_limit = check_resources(c.get("resources"), cpath + ".resources")
        threads = dict(args).get("--threads")
        if threads is not None and cpu_limit is not None and threads.isdigit():
            if int(threads) == 0:
                error(cpath, "--threads 0 means one per core of the node, not of the pod's CPU limit")
            elif int(threads) > cpu_limit:
                error(cpath, f"--threads {threads} is above the CPU limit {cpu_limit}")
        for probe, want in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
            got = ((c.get(probe) or {}).get("httpGet") or {}).get("path")
            if got is not None and got != want:
                error(cpath, f"{probe} should ask {want}, not {got}")

    # The InferenceService against the runtime.
    sv, _, sv_path = isvc
    pred = sv.get("spec", {}).get("predictor", {})
    model = pred.get("model", {})
    fmt = (model.get("modelFormat") or {}).get("name")
    if fmt not in formats:
        error(sv_path, f"modelFormat {fmt!r} is not one the runtime supports ({sorted(formats)})")
    if model.get("runtime") not in (None, rt.get("metadata", {}).get("name")):
        error(sv_path, f"runtime {model.get('runtime')!r} is not the ServingRuntime's name")
    if model.get("protocolVersion", "v2") != "v2":
        error(sv_path, "protocolVersion must be v2")
    uri = model.get("storageUri", "")
    if not re.match(r"^(pvc|s3|gs|hdfs|webhdfs|https?|oci|hf)://[^/]+", uri):
        error(sv_path, f"storageUri {uri!r} has no scheme KServe's storage initializer knows")
    ints = lambda *vs: all(isinstance(v, int) and not isinstance(v, bool) for v in vs)  # noqa: E731
    lo, hi = pred.get("minReplicas", 1), pred.get("maxReplicas", 0)
    if ints(lo, hi) and hi and lo > hi:
        error(sv_path, f"minReplicas {lo} > maxReplicas {hi}")
    metric, target = pred.get("scaleMetric"), pred.get("scaleTarget")
    if metric not in (None, "cpu", "memory", "concurrency", "rps"):
        error(sv_path, f"scaleMetric {metric!r} is not cpu, memory, concurrency or rps")
    if ints(target) and target <= 0:
        error(sv_path, "scaleTarget must be positive")
    cc = pred.get("containerConcurrency")
    if metric == "concurrency" and ints(cc, target) and cc and target and cc < target:
        error(sv_path, f"containerConcurrency {cc} is below scaleTarget {target}: pods could never reach the target")
    max_queue = dict(flag_values(containers[0].get("args", []), "args")).get("--max-queue", "256") if containers else "256"
    if ints(cc) and cc and max_queue.isdigit() and cc > int(max_queue):
        error(sv_path, f"containerConcurrency {cc} is above fffserve's --max-queue {max_queue}: the excess would get 503")
    check_resources(model.get("resources"), f"{sv_path}:predictor.model.resources")
    return report(source)


def report(source):
    if errors:
        print("deploy/check.py: %d problem(s)" % len(errors))
        for e in errors:
            print("  " + e)
        return 1
    version = getattr(__import__("kserve"), "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as v

            version = v("kserve")
        except Exception:  # pragma: no cover
            version = "?"
    print(
        f"deploy/check.py: ServingRuntime and InferenceService match the kserve {version} SDK's types; "
        f"runtime, format, ports, args (flags per {source}), resources and scaling agree"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
