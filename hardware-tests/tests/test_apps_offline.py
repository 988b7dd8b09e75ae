"""What can be checked of the app test's k3s back end (smarter_hil/apps.py, CrictlApps)
without a board: no k3s runs here, so these tests stand in for the gateway.

* The pod and container config files it hands `crictl runp` / `crictl create` use only
  fields of CRI runtime v1's PodSandboxConfig and ContainerConfig, with values of the
  fields' types. crictl decodes them with Go's encoding/json, which drops a key naming no
  field without a word, so a typo would otherwise only show as a pod configured wrongly on
  a board. The schema is smarter_hil/cri_runtime_v1_config.proto as protoc reads it, with
  the messages it imports from smarter-dns's CRI subset (one definition of each).
* The sequence it runs on the gateway, against a recording stand-in for the gateway's
  shell that models containerd's pods, the k3s agent's process and the image: the kubelet
  is stopped before the first sandbox and resumed only after the last is removed, and a
  failure at any step (a check, `crictl runp`, the shell itself) still leaves no pod, a
  running kubelet and no image.

Needs protoc and google/protobuf/descriptor.proto (Debian protobuf-compiler and
libprotobuf-dev); without them the schema tests skip, or fail under CI /
SMARTER_REQUIRE_PEERS.
"""

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest

from smarter_hil import apps
from smarter_hil.apps import APP_A, APP_B, OUTSIDE_ADDR, CrictlApps, check_apps

HERE = pathlib.Path(__file__).resolve().parent.parent
OUR_PROTO = HERE / "smarter_hil" / "cri_runtime_v1_config.proto"
DNS_PROTO = HERE.parent / "services" / "dns" / "proto" / "cri_runtime_v1.proto"
PACKAGE = ".runtime.v1."


def _missing(why):
    if os.environ.get("CI") or os.environ.get("SMARTER_REQUIRE_PEERS"):
        pytest.fail(f"required peer missing (CI or SMARTER_REQUIRE_PEERS is set): {why}")
    pytest.skip(why)


def _parse_text_format(text):
    """protoc's text format of a FileDescriptorSet as nested dicts of lists."""
    stack = [{}]
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.endswith("{"):
            node = {}
            stack[-1].setdefault(line[:-1].strip(), []).append(node)
            stack.append(node)
        elif line == "}":
            stack.pop()
        else:
            key, value = line.split(":", 1)
            stack[-1].setdefault(key.strip(), []).append(value.strip().strip('"'))
    return stack[0]


def load_schema(proto):
    """Messages and enums of `proto` as protoc parses them:
    {".runtime.v1.Name": {"fields": {name: {...}}, "map_entry": bool}} and
    {".runtime.v1.Enum": {numbers}}."""
    protoc = shutil.which("protoc")
    if not protoc:
        _missing("protoc (Debian protobuf-compiler) is not installed")
    include = next((d for d in ("/usr/include", "/usr/local/include")
                    if pathlib.Path(d, "google/protobuf/descriptor.proto").is_file()), None)
    if include is None:
        _missing("google/protobuf/descriptor.proto (Debian libprotobuf-dev) is not installed")
    compiled = subprocess.run([protoc, f"-I{proto.parent}", f"-I{DNS_PROTO.parent}", "--include_imports",
                               "--descriptor_set_out=/dev/stdout", proto.name], capture_output=True)
    assert compiled.returncode == 0, f"protoc rejects {proto}: {compiled.stderr.decode()}"
    decoded = subprocess.run([protoc, f"-I{include}", "--decode=google.protobuf.FileDescriptorSet",
                              "google/protobuf/descriptor.proto"], input=compiled.stdout, capture_output=True)
    assert decoded.returncode == 0, decoded.stderr.decode()
    tree = _parse_text_format(decoded.stdout.decode())
    messages, enums = {}, {}

    def add(message, prefix):
        name = prefix + message["name"][0]
        options = message.get("options", [{}])[0]
        messages[name] = {
            "map_entry": options.get("map_entry") == ["true"],
            "fields": {f["name"][0]: {"number": int(f["number"][0]), "label": f["label"][0],
                                      "type": f["type"][0], "type_name": f.get("type_name", [""])[0]}
                       for f in message.get("field", [])},
        }
        for nested in message.get("nested_type", []):
            add(nested, name + ".")
        for enum in message.get("enum_type", []):
            enums[f"{name}.{enum['name'][0]}"] = {int(v["number"][0]) for v in enum.get("value", [])}

    for file in tree["file"]:
        for message in file.get("message_type", []):
            add(message, PACKAGE)
        for enum in file.get("enum_type", []):
            enums[PACKAGE + enum["name"][0]] = {int(v["number"][0]) for v in enum.get("value", [])}
    return messages, enums


@pytest.fixture(scope="module")
def schema():
    return load_schema(OUR_PROTO)


def check_json(value, message, schema, where="$"):
    """Raise AssertionError unless `value` is what Go's encoding/json decodes into
    `message` with every key a field of it and every value of the field's type."""
    messages, enums = schema
    assert isinstance(value, dict), f"{where}: {message} must be an object, not {value!r}"
    fields = messages[message]["fields"]
    for key, item in value.items():
        assert key in fields, f"{where}.{key}: {message[len(PACKAGE):]} has no field {key!r} ({sorted(fields)})"
        field = fields[key]
        entry = messages.get(field["type_name"])
        if entry and entry["map_entry"]:
            assert isinstance(item, dict), f"{where}.{key}: a map must be an object"
            for k, v in item.items():
                _check_single(k, entry["fields"]["key"], schema, f"{where}.{key} key")
                _check_single(v, entry["fields"]["value"], schema, f"{where}.{key}[{k!r}]")
        elif field["label"] == "LABEL_REPEATED":
            assert isinstance(item, list), f"{where}.{key}: a repeated field must be a list"
            for i, element in enumerate(item):
                _check_single(element, field, schema, f"{where}.{key}[{i}]")
        else:
            _check_single(item, field, schema, f"{where}.{key}")


def _check_single(value, field, schema, where):
    kind = field["type"]
    if kind == "TYPE_MESSAGE":
        check_json(value, field["type_name"], schema, where)
    elif kind == "TYPE_STRING":
        assert isinstance(value, str), f"{where}: must be a string, not {value!r}"
    elif kind == "TYPE_BOOL":
        assert isinstance(value, bool), f"{where}: must be true or false, not {value!r}"
    elif kind == "TYPE_ENUM":
        # Go's encoding/json reads the generated enum types (int32) from numbers only.
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: an enum is a number here"
        assert value in schema[1][field["type_name"]], f"{where}: {value} is no value of {field['type_name']}"
    elif kind in ("TYPE_INT32", "TYPE_INT64", "TYPE_UINT32", "TYPE_UINT64"):
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: must be an integer"
        assert value >= 0 or kind in ("TYPE_INT32", "TYPE_INT64"), f"{where}: must not be negative"
    else:
        raise AssertionError(f"{where}: field type {kind} is not checked here; add it")


POD = PACKAGE + "PodSandboxConfig"
CONTAINER = PACKAGE + "ContainerConfig"


@pytest.mark.parametrize("parent", ["system.slice", "/smarter-hil"])
def test_pod_config_uses_only_cri_fields(schema, parent):
    check_json(apps.pod_config(APP_A, "0c6f7c1e-1111-4d6b-8f6a-2b1a3c4d5e6f", "/run/x", parent), POD, schema)


@pytest.mark.parametrize("read_only", [True, False])
def test_container_config_uses_only_cri_fields(schema, read_only):
    check_json(apps.container_config(read_only), CONTAINER, schema)


@pytest.mark.parametrize("mutate, complaint", [
    (lambda pod: pod.update(log_dir=pod.pop("log_directory")), "has no field 'log_dir'"),
    (lambda pod: pod.update(dnsConfig=pod.pop("dns_config")), "has no field 'dnsConfig'"),
    (lambda pod: pod["dns_config"].update(servers="169.254.0.2"), "must be a list"),
    (lambda pod: pod["linux"]["security_context"]["namespace_options"].update(network="POD"), "is a number"),
    (lambda pod: pod["metadata"].update(attempt=-1), "must not be negative"),
])
def test_the_check_catches_what_crictl_would_drop_or_refuse(schema, mutate, complaint):
    pod = apps.pod_config(APP_A, "uid", "/run/x", "system.slice")
    mutate(pod)
    with pytest.raises(AssertionError, match=complaint):
        check_json(pod, POD, schema)


def test_shared_cri_messages_come_from_smarter_dns_subset(schema):
    """The pod config's sandbox metadata and namespace options are smarter-dns's messages,
    imported, so the two subsets cannot drift apart; and nothing is defined twice (protoc
    would refuse it)."""
    messages, enums = schema
    dns_messages, dns_enums = load_schema(DNS_PROTO)
    pod = messages[POD]["fields"]
    assert pod["metadata"]["type_name"] == PACKAGE + "PodSandboxMetadata"
    assert PACKAGE + "PodSandboxMetadata" in dns_messages
    security = messages[PACKAGE + "LinuxSandboxSecurityContext"]["fields"]
    assert security["namespace_options"]["type_name"] == PACKAGE + "NamespaceOption"
    assert PACKAGE + "NamespaceOption" in dns_messages and PACKAGE + "NamespaceMode" in dns_enums
    text = OUR_PROTO.read_text()
    for name in dns_messages:
        assert f"message {name[len(PACKAGE):]} " not in text, f"{name} is smarter-dns's; import it"


# The stand-in gateway.

KUBELET, WATCHDOG, ADDRESS = "4242", "5151", "172.39.0.5"


class FakeK3sGateway:
    """A k3s gateway's shell as CrictlApps uses it: every command is recorded and answered
    from a model of containerd's pods, the k3s agent's process and the probe image. A
    command it does not know fails the test, so a new step must be modelled here."""

    def __init__(self, fail_runp=None, resolvable=True, raise_on=None):
        # raise_on: a command (pattern) after which the shell gives no prompt back, while
        # the kubelet is stopped.
        self.fail_runp, self.resolvable, self.raise_on = fail_runp, resolvable, raise_on
        self.commands, self.events, self.files = [], [], {}
        self.pods, self.containers = {}, {}
        self.kubelet, self.image = "running", False
        self._next = 0

    def _id(self):
        self._next += 1
        return f"{self._next:064x}"

    def run(self, cmd, timeout=30):
        self.commands.append(cmd)
        if self.raise_on and self.kubelet == "stopped" and re.search(self.raise_on, cmd):
            raise TimeoutError(f"stand-in: no prompt after {cmd!r}")
        for pattern, handler in self.RULES:
            match = re.search(pattern, cmd, re.S)
            if match:
                out, code = handler(self, match)
                return out, [], code
        raise AssertionError(f"the stand-in gateway does not know this command: {cmd}")

    def remove_pods(self, match):
        self.events.append(("remove", sorted(self.pods.values())))
        self.pods.clear()
        self.containers.clear()
        return [], 0

    def import_image(self, match):
        self.image = True
        return ["unpacking docker.io/library/smarter-hil-probe:1 ...done"], 0

    def signal(self, match):
        sig, pid = match.group(1), match.group(2)
        assert pid == KUBELET, f"signal {sig} to {pid}, not the k3s agent"
        self.kubelet = "stopped" if sig == "STOP" else "running"
        self.events.append((sig, None))
        return [], 0

    def write(self, match):
        words = shlex.split(match.group(0))
        self.files[words[-1]] = json.loads(words[2])
        return [], 0

    def runp(self, match):
        name = self.files[match.group(1)]["metadata"]["name"]
        self.events.append(("runp", name, self.kubelet))
        if name == self.fail_runp:
            return ["FATA[0002] run pod sandbox: rpc error: code = Unknown desc = failed to setup network"], 1
        pod = self._id()
        self.pods[pod] = name
        return [pod], 0

    def create(self, match):
        assert match.group(1) in self.pods, "create in a sandbox that does not exist"
        container = self._id()
        self.containers[container] = match.group(1)
        return [container], 0

    def inspectp(self, match):
        assert self.pods.get(match.group(1)) == APP_A
        return json.dumps({"status": {"network": {"additionalIps": [], "ip": ADDRESS}}, "info": {}},
                          indent=2).splitlines(), 0

    def exec(self, match):
        container, cmd = match.group(1), match.group(2)
        assert self.pods.get(self.containers.get(container)) == APP_B, "exec not in app B"
        if cmd.startswith("/usr/bin/getent hosts outside."):
            return [f"{OUTSIDE_ADDR}      outside.smarter-hil.test"], 0
        if cmd.startswith("/usr/bin/getent hosts hil-app-a"):
            return ([f"{ADDRESS}      {cmd.split()[-1]}"], 0) if self.resolvable else ([], 2)
        if "nc.openbsd -N" in cmd:
            return ["connected"], 0
        raise AssertionError(f"unexpected command in app B: {cmd}")

    def remove_image(self, match):
        self.image = False
        return [], 0

    RULES = [
        (r"^for c in k3s ldd", lambda self, m: ([], 0)),
        (r"k3s ctr -n k8s.io images import ", import_image),
        (r"^for p in .*crictl pods -q --label smarter-hil=app-test .*crictl stopp.*crictl rmp", remove_pods),
        (r"^\{ k3s crictl info", lambda self, m: (["cgroupfs"], 0)),
        (r"^systemctl show -p MainPID --value k3s-agent$", lambda self, m: ([KUBELET], 0)),
        (rf"^\( sleep \d+; kill -CONT {KUBELET} \) .*& echo \$!$", lambda self, m: ([WATCHDOG], 0)),
        (r"^kill -(STOP|CONT) (\d+)$", signal),
        (rf"^kill {WATCHDOG} ", lambda self, m: ([], 0)),
        (r"^mkdir -p \S+$", lambda self, m: ([], 0)),
        (r"^printf %s '.*' > \S+$", write),
        (r"^k3s crictl runp (\S+)$", runp),
        (r"^k3s crictl create (\S+) \S+ \S+$", create),
        (r"^k3s crictl start \S+$", lambda self, m: ([], 0)),
        (r"^k3s crictl inspectp -o json (\S+)$", inspectp),
        (r"^k3s crictl exec -s --timeout \d+ (\S+) (.*)$", exec),
        (r"^k3s crictl rmi docker.io/library/smarter-hil-probe:1 .*\|\| "
         r"k3s ctr -n k8s.io images rm docker.io/library/smarter-hil-probe:1 ", remove_image),
        (r"^rm -rf /run/smarter-hil/cri$", lambda self, m: ([], 0)),
    ]


def _run(gateway, monkeypatch):
    monkeypatch.setattr(apps, "RESOLVE_DEADLINE_S", 0.2)
    monkeypatch.setattr(apps.time, "sleep", lambda s: None)
    back_end, figures = CrictlApps(gateway), []
    try:
        check_apps(back_end, lambda *figure: figures.append(figure))
    finally:
        back_end.cleanup()
    return figures


def _assert_left_clean(gateway):
    assert not gateway.pods, f"pods left: {gateway.pods}"
    assert gateway.kubelet == "running"
    assert not gateway.image, "the probe image is left in containerd"
    # Every sandbox was asked for while the kubelet was stopped, and the kubelet ran again
    # only after the last removal.
    runs = [e for e in gateway.events if e[0] == "runp"]
    assert runs and all(state == "stopped" for _, _, state in runs), runs
    stop, cont = gateway.events.index(("STOP", None)), gateway.events.index(("CONT", None))
    last_removal = max(i for i, e in enumerate(gateway.events) if e[0] == "remove")
    assert stop < gateway.events.index(runs[0]) and last_removal < cont, gateway.events


def test_crictl_back_end_runs_both_apps_and_leaves_nothing(schema, monkeypatch):
    gateway = FakeK3sGateway()
    figures = _run(gateway, monkeypatch)
    assert [name for name, _, _ in figures] == ["app start to name resolvable"]
    _assert_left_clean(gateway)
    # B first (so the figure is A's alone), then A; the files crictl read are CRI's.
    assert [e[1] for e in gateway.events if e[0] == "runp"] == [APP_B, APP_A]
    for path, data in gateway.files.items():
        check_json(data, POD if path.endswith("-pod.json") else CONTAINER, schema, path)
    pod_a = gateway.files[f"/run/smarter-hil/cri/{APP_A}-pod.json"]
    assert pod_a["metadata"]["name"] == APP_A and pod_a["dns_config"]["servers"] == [apps.DNS]
    assert pod_a["linux"]["cgroup_parent"] == "/smarter-hil"  # the stand-in's containerd uses cgroupfs
    # Both names of A were asked: the pod name (through the search list) and its service form.
    asked = [c.split()[-1] for c in gateway.commands if "getent hosts hil-app-a" in c]
    assert set(asked) == {APP_A, f"{APP_A}.smarter-hil.svc.cluster.local"}


def test_crictl_back_end_cleans_up_when_the_name_never_resolves(monkeypatch):
    gateway = FakeK3sGateway(resolvable=False)
    with pytest.raises(AssertionError, match="resolved hil-app-a to nothing"):
        _run(gateway, monkeypatch)
    _assert_left_clean(gateway)


def test_crictl_back_end_cleans_up_when_a_sandbox_fails(monkeypatch):
    gateway = FakeK3sGateway(fail_runp=APP_A)
    with pytest.raises(AssertionError, match="`crictl runp` of hil-app-a failed"):
        _run(gateway, monkeypatch)
    _assert_left_clean(gateway)
    # B's sandbox existed when A's failed; the removal took it.
    assert ("remove", [APP_B]) in gateway.events


def test_crictl_back_end_resumes_the_kubelet_when_the_shell_fails_at_removal(monkeypatch):
    # The gateway's shell gives no prompt back during the pods' removal: the kubelet must
    # still be resumed and the image removed (the pods are then the kubelet's to reap).
    gateway = FakeK3sGateway(raise_on=r"^for p in .*crictl stopp")
    with pytest.raises(TimeoutError):
        _run(gateway, monkeypatch)
    assert gateway.kubelet == "running" and not gateway.image
    assert gateway.commands[-1] == "rm -rf /run/smarter-hil/cri"
