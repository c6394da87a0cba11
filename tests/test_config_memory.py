"""The memory: section, models' memory needs and sleep/wake: sizes, defaults, bad input; and
the readers of nvidia-smi's output."""

from __future__ import annotations

import pytest

from llamaswap.config import ConfigError, load_config_text
from llamaswap.config.memory import parse_action
from llamaswap.ops import memory_probe
from llamaswap.sizes import GiB, MiB, parse_size

MODEL = "models:\n  a:\n    cmd: serve --port ${PORT}\n"


def load(text: str):
    return load_config_text(text, "c.yaml")


@pytest.mark.parametrize("text,size", [
    ("0", 0), ("1024", 1024), ("1B", 1), ("1KiB", 1024), ("1.5GiB", 3 * GiB // 2),
    ("512MiB", 512 * MiB), ("2TiB", 2 << 40), ("1KB", 1000), ("24GB", 24_000_000_000),
    ("3 gib", 3 * GiB), ("1TB", 10 ** 12)])
def test_sizes_in_both_bases(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "1XB", "-1", "1.2.3GiB", "ten"])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_the_memory_section_and_model_keys():
    cfg = load("memory:\n  devices: {gpu0: 24GiB, gpu1: auto, ram: 64GB}\n  headroom: 512MiB\n"
               "  every: 2s\n" + MODEL + "    memory: {gpu0: 9GiB, ram: 1GiB}\n"
               "    sleep: POST /sleep?level=1\n    wake: POST /wake_up\n")
    assert dict(cfg.memory.devices) == {"gpu0": 24 * GiB, "gpu1": None, "ram": 64 * 10 ** 9}
    assert cfg.memory.headroom == 512 * MiB and cfg.memory.every == 2
    a = cfg.models["a"]
    assert dict(a.memory) == {"gpu0": 9 * GiB, "ram": GiB}
    assert (a.sleep, a.wake) == ("POST /sleep?level=1", "POST /wake_up")
    assert load(MODEL).memory is None  # no section: nothing changes


def test_sleep_commands_get_macros_and_keep_pid_for_run_time():
    cfg = load("macros:\n  k: /usr/bin/kill\n" + MODEL +
               "    sleep: ${k} -STOP ${PID} # ${MODEL_ID} ${PORT}\n"
               "    wake: '${k} -CONT ${PID} ${MODEL_ID} ${PORT}'\n")
    assert cfg.models["a"].sleep == "/usr/bin/kill -STOP ${PID}"  # YAML comment dropped
    assert cfg.models["a"].wake == "/usr/bin/kill -CONT ${PID} a 5800"


@pytest.mark.parametrize("text,where,message", [
    ("memory:\n  devices: {gpu0: 24GB3}\n" + MODEL, "memory.devices.gpu0", "invalid size '24GB3'"),
    ("memory:\n  devices: {vram: 24GiB}\n" + MODEL, "memory.devices.vram", "unknown device 'vram'"),
    ("memory:\n  devices: {gpu0: 0}\n" + MODEL, "memory.devices.gpu0", "more than 0"),
    ("memory:\n  headroom: 1GiB\n" + MODEL, "memory.devices", "lists no device"),
    ("memory:\n  devices: {gpu0: 1GiB}\n  headroom: lots\n" + MODEL, "memory.headroom", "'lots'"),
    ("memory:\n  devices: {gpu0: 1GiB}\n  budget: 1\n" + MODEL, "memory.budget", "unknown key"),
    ("memory:\n  devices: {gpu0: 1GiB}\n  every: soon\n" + MODEL, "memory.every", "'soon'"),
    ("memory:\n  devices: {gpu0: 1GiB}\n" + MODEL + "    memory: {ram: 1GiB}\n",
     "models.a.memory.ram", "device 'ram' is not managed"),
    ("memory:\n  devices: {gpu0: 1GiB}\n" + MODEL + "    memory: {gpu7x: 1GiB}\n",
     "models.a.memory.gpu7x", "unknown device"),
    (MODEL + "    memory: {gpu0: 1GiB}\n", "models.a.memory.gpu0", "no memory section"),
    ("memory:\n  devices: {gpu0: 8GiB}\n" + MODEL + "    memory: {gpu0: much}\n",
     "models.a.memory.gpu0", "invalid size 'much'"),
    (MODEL + "    sleep: POST /sleep\n", "models.a.sleep", "sleep is set without wake"),
    (MODEL + "    wake: POST /wake_up\n", "models.a.wake", "wake is set without sleep"),
    (MODEL + "    sleep: FETCH /sleep\n    wake: POST /wake_up\n", "models.a.sleep",
     "unknown HTTP method 'FETCH'"),
    (MODEL + "    sleep: POST /sleep\n    wake: SNAP /wake\n", "models.a.wake",
     "unknown HTTP method 'SNAP'"),
])
def test_bad_memory_config_names_the_key_and_value(text, where, message):
    with pytest.raises(ConfigError) as info:
        load(text)
    assert where in str(info.value) and message in str(info.value), str(info.value)


def test_a_model_that_can_never_fit_is_warned_about_at_load():
    cfg = load("memory:\n  devices: {gpu0: 8GiB}\n  headroom: 1GiB\n" + MODEL
               + "    memory: {gpu0: 7.5GiB}\n")
    (warning,) = [w for w in cfg.warnings if "memory" in w]
    assert "'a' can never fit on gpu0" in warning and "503" in warning


def test_actions_http_or_command():
    assert parse_action("POST /sleep?level=1").method == "POST"
    assert parse_action("POST /sleep?level=1").path == "/sleep?level=1"
    assert parse_action("docker exec x sleep").command == "docker exec x sleep"
    assert not parse_action("kill -STOP ${PID}").is_http


def test_nvidia_smi_output_is_read_and_garbage_is_refused():
    gpus = memory_probe.parse_gpus("0, GPU-aaa, 81559, 1024\n1, GPU-bbb, 81559, [N/A]\n")
    assert gpus[0].total == 81559 * MiB and gpus[0].used == 1024 * MiB and gpus[1].used == 0
    apps = memory_probe.parse_apps("123, GPU-aaa, 2048\n456, GPU-bbb, [N/A]\n"
                                   "No running processes found\n")
    assert apps == ((123, "GPU-aaa", 2048 * MiB), (456, "GPU-bbb", 0))
    with pytest.raises(memory_probe.ProbeError):
        memory_probe.parse_gpus("Failed to initialize NVML: Driver/library version mismatch\n")


def test_a_hanging_nvidia_smi_costs_its_timeout_not_a_stuck_thread(tmp_path, monkeypatch):
    from memkit import FakeGpu
    fake = FakeGpu(tmp_path, monkeypatch, mode="hang")
    with pytest.raises(memory_probe.ProbeError, match="did not answer"):
        memory_probe.read_gpus(f"{fake.bin}/nvidia-smi", timeout=0.5)


def test_a_process_tree_is_its_group_session_and_descendants():
    table = {10: memory_probe.ProcEntry(1, 10, 10), 11: memory_probe.ProcEntry(10, 10, 10),
             12: memory_probe.ProcEntry(11, 12, 12),  # moved to its own session
             13: memory_probe.ProcEntry(1, 10, 10),  # reparented, still in the group
             20: memory_probe.ProcEntry(1, 20, 20)}
    assert memory_probe.tree_of(10, table) == {10, 11, 12, 13}
