"""The deployment kit in export/: TF Serving config files and the compose file."""

from __future__ import annotations

import os
import re

import pytest

KIT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "export")

# BatchingParameters fields (tensorflow_serving/servables/tensorflow/session_bundle_config.proto).
WRAPPED = {"max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
           "thread_pool_name"}
REPEATED = {"allowed_batch_sizes"}
PLAIN = {"pad_variable_length_inputs", "enable_large_batch_splitting"}


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_models_config_is_a_valid_model_server_config():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    with open(os.path.join(KIT, "models.config")) as f:
        text_format.Parse(f.read(), config)
    models = config.model_config_list.config
    assert [m.name for m in models] == ["dnc"]
    assert models[0].base_path == "/models/dnc"  # where docker-compose.yml mounts the export base
    assert models[0].model_platform == "tensorflow"
    assert models[0].model_version_policy.latest.num_versions == 2


def test_batching_parameters_use_known_fields_consistently():
    with open(os.path.join(KIT, "batching_parameters.txt")) as f:
        text = _strip_comments(f.read())
    values: dict = {}
    for line in filter(None, (line.strip() for line in text.splitlines())):
        wrapped = re.fullmatch(r"(\w+)\s*\{\s*value:\s*(\d+)\s*\}", line)
        plain = re.fullmatch(r"(\w+):\s*(\w+)", line)
        if wrapped and wrapped[1] in WRAPPED:
            values[wrapped[1]] = int(wrapped[2])
        elif plain and plain[1] in REPEATED:
            values.setdefault(plain[1], []).append(int(plain[2]))
        elif plain and plain[1] in PLAIN:
            assert plain[2] in ("true", "false"), line
        else:
            pytest.fail(f"batching_parameters.txt: unknown or malformed line {line!r}")
    sizes = values["allowed_batch_sizes"]
    # TF Serving requires increasing sizes ending at max_batch_size.
    assert sizes == sorted(set(sizes)) and sizes[-1] == values["max_batch_size"]
    assert values["batch_timeout_micros"] > 0 and values["num_batch_threads"] >= 1


def test_compose_serves_rest_8501_grpc_8500_with_the_kit():
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(KIT, "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    service = compose["services"]["tfserving"]
    assert "tensorflow/serving" in service["image"]
    assert set(service["ports"]) == {"8500:8500", "8501:8501"}
    flags = dict(arg.lstrip("-").split("=", 1) for arg in service["command"])
    assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
    # host:container[:ro]; the host side may be "${EXPORT_BASE:-../exports}".
    mounts = {}
    for volume in service["volumes"]:
        host, container = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::ro)?", volume).groups()
        mounts[container] = host
    assert mounts[flags["model_config_file"]] == "./models.config"
    assert mounts[flags["batching_parameters_file"]] == "./batching_parameters.txt"
    assert "/models" in mounts  # the export base, matching models.config's base_path
    for local in ("./models.config", "./batching_parameters.txt"):
        assert os.path.isfile(os.path.join(KIT, local))


def test_exports_warm_up_every_batch_size_the_kit_allows(tmp_path):
    from tfdnc.exporting.warmup import DEFAULT_WARMUP_BATCH_SIZES, batching_batch_sizes

    kit_sizes = batching_batch_sizes(os.path.join(KIT, "batching_parameters.txt"))
    assert kit_sizes == DEFAULT_WARMUP_BATCH_SIZES == (1, 4, 16, 32, 64)
    only_max = tmp_path / "only_max.txt"
    only_max.write_text("max_batch_size { value: 8 }  # no allowed_batch_sizes\nbatch_timeout_micros { value: 1 }\n")
    assert batching_batch_sizes(only_max) == (1, 8)
    empty = tmp_path / "empty.txt"
    empty.write_text("# allowed_batch_sizes: 4 (commented out)\n")
    with pytest.raises(ValueError, match="neither allowed_batch_sizes nor max_batch_size"):
        batching_batch_sizes(empty)
    with pytest.raises(ValueError, match="cannot read batching parameters"):
        batching_batch_sizes(tmp_path / "missing.txt")
