import json
import shutil

import pytest

from planner import gpus
from planner.errors import InputError
from planner.paths import gpus_dir

REQUIRED = [
    "a100-40gb-sxm", "a100-80gb-sxm", "h100-sxm", "h100-pcie", "h200", "l4", "l40s", "a10g", "t4", "v100-sxm",
    "rtx-4090", "mi300x", "cpu",
]


def _copy(tmp_path, gpu_id="a100-80gb-sxm", new_id="test-gpu"):
    """A copy of a catalog file under a new id, as text to edit."""
    text = (gpus_dir() / f"{gpu_id}.yaml").read_text()
    text = text.replace(f"id: {gpu_id}", f"id: {new_id}")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("aliases:"))
    return tmp_path / f"{new_id}.yaml", text


@pytest.mark.parametrize("path", sorted(gpus_dir().glob("*.yaml")), ids=lambda p: p.stem)
def test_every_catalog_file_validates(path):
    spec = gpus.load_gpu_file(path)
    assert spec.id == path.stem
    assert spec.version == 1
    if not spec.measured_local:
        for figure in spec.cited_figures():
            assert figure in spec.sources or figure.split(".")[0] in spec.sources


def test_required_gpus_present():
    catalog = gpus.load_catalog()
    assert set(REQUIRED) <= set(catalog)
    assert catalog["cpu"].measured_local and catalog["cpu"].peak_flops("bf16") is None


def test_unknown_field_names_file_and_field(tmp_path):
    path, text = _copy(tmp_path)
    path.write_text(text.replace("memory_gb: 80", "memroy_gb: 80"))
    with pytest.raises(InputError) as exc:
        gpus.load_gpu_file(path)
    msg = str(exc.value)
    assert "test-gpu.yaml" in msg and "unknown field 'memroy_gb'" in msg and "memory_gb" in msg


def test_unknown_nested_field_and_bad_value(tmp_path):
    path, text = _copy(tmp_path)
    path.write_text(text.replace("  bf16: 312", "  bff16: 312"))
    with pytest.raises(InputError, match=r"test-gpu\.yaml.*peak_tflops.*unknown field 'bff16'"):
        gpus.load_gpu_file(path)
    path.write_text(text.replace("bandwidth_gb_s: 2039", "bandwidth_gb_s: -1"))
    with pytest.raises(InputError, match=r"test-gpu\.yaml: field 'bandwidth_gb_s'"):
        gpus.load_gpu_file(path)


def test_yaml_error_names_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("id: broken\nname: [unclosed\n")
    with pytest.raises(InputError, match=r"broken\.yaml: not valid YAML"):
        gpus.load_gpu_file(path)


def test_missing_source_fails(tmp_path):
    path, text = _copy(tmp_path)
    assert "  tdp_w: *ds\n" in text
    path.write_text(text.replace("  tdp_w: *ds\n", ""))
    with pytest.raises(InputError) as exc:
        gpus.load_gpu_file(path)
    assert "test-gpu.yaml" in str(exc.value) and "'tdp_w'" in str(exc.value) and "no source" in str(exc.value)


def test_misspelt_source_key_fails(tmp_path):
    path, text = _copy(tmp_path)
    path.write_text(text.replace("  tdp_w: *ds", "  tdp_w: *ds\n  tdpw: typo"))
    with pytest.raises(InputError, match=r"test-gpu\.yaml.*sources.*'tdpw'"):
        gpus.load_gpu_file(path)


def test_id_must_match_file_stem(tmp_path):
    path, text = _copy(tmp_path)
    (tmp_path / "other-name.yaml").write_text(text)
    with pytest.raises(InputError, match=r"other-name\.yaml: field 'id'"):
        gpus.load_gpu_file(tmp_path / "other-name.yaml")


def test_duplicate_alias_names_both_files(tmp_path):
    path, text = _copy(tmp_path)
    path.write_text(text + "\naliases: [a100]\n")
    with pytest.raises(InputError) as exc:
        gpus.load_catalog(extra_dirs=[tmp_path])
    assert "test-gpu.yaml" in str(exc.value) and "a100-80gb-sxm.yaml" in str(exc.value)


def test_duplicate_id_names_both_files(tmp_path):
    shutil.copy(gpus_dir() / "t4.yaml", tmp_path / "t4.yaml")
    with pytest.raises(InputError) as exc:
        gpus.load_catalog(extra_dirs=[tmp_path])
    assert str(tmp_path.name) in str(exc.value) and "profiles/gpus/t4.yaml" in str(exc.value).replace("\\", "/")


def test_extra_dir_adds_a_gpu(tmp_path):
    path, text = _copy(tmp_path)
    path.write_text(text)
    catalog = gpus.load_catalog(extra_dirs=[tmp_path])
    assert gpus.get_gpu("TEST-GPU", catalog).memory_gb == 80


def test_aliases_resolve():
    assert gpus.get_gpu("a100").id == "a100-80gb-sxm"
    assert gpus.get_gpu("A100").id == "a100-80gb-sxm"
    assert gpus.get_gpu("h100").id == "h100-sxm"
    assert gpus.get_gpu("v100").id == "v100-sxm"
    assert gpus.get_gpu("4090").id == "rtx-4090"
    assert gpus.get_gpu("A100_40GB_SXM").id == "a100-40gb-sxm"
    note = gpus.resolution_note("a100")
    assert "a100-80gb-sxm" in note and "a100-40gb-sxm" in note and "a100-80gb-pcie" in note
    assert gpus.resolution_note("a100-80gb-sxm") is None


def test_unknown_gpu_suggests():
    with pytest.raises(InputError) as exc:
        gpus.get_gpu("a10")
    msg = str(exc.value)
    assert msg.startswith("unknown GPU 'a10'; did you mean") and "a10g" in msg.split("(accepted")[0]


def test_ridge_point_and_units():
    a100 = gpus.get_gpu("a100")
    assert a100.peak_flops("bf16") == 312e12
    assert a100.bandwidth_bytes_per_s == 2039e9
    assert a100.ridge_point("bf16") == 312e12 / 2039e9
    assert a100.memory_bytes == 80e9
    assert a100.peak_flops("fp8") is None and a100.ridge_point("fp8") is None
    h100 = gpus.get_gpu("h100")
    assert h100.peak_flops("bf16") == pytest.approx(989.4e12) and h100.bandwidth_gb_s == 3352
    with pytest.raises(InputError, match="unknown dtype 'bf61'"):
        a100.peak_flops("bf61")


def test_sparse_2to4_support():
    for name in ("t4", "v100"):
        spec = gpus.get_gpu(name)
        assert not spec.sparse_2to4.dtypes
        assert not any(spec.sparse_2to4_for(d) for d in gpus.GPU_DTYPES)
    for name in ("a100", "a100-40gb-sxm", "h100", "h100-pcie", "h200", "l4", "l40s"):
        assert gpus.get_gpu(name).sparse_2to4_for("bf16")
    assert gpus.get_gpu("h100").sparse_2to4_for("fp8")
    assert not gpus.get_gpu("a100").sparse_2to4_for("fp8")  # no fp8 at all before Hopper/Ada
    assert not gpus.get_gpu("a100").sparse_2to4_for("fp32")


def test_dense_not_sparse_peaks():
    # the with-sparsity figure is twice the dense one; the catalog must hold the dense one
    assert gpus.get_gpu("h100").peak_tflops.fp8 == pytest.approx(1978.9)
    assert gpus.get_gpu("l4").peak_tflops.bf16 == 121
    assert gpus.get_gpu("mi300x").peak_tflops.bf16 == 1307.4


def test_cli_json(capsys):
    from planner.cli import main

    assert main(["gpus", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {g["id"] for g in data["gpus"]} >= set(REQUIRED)
    assert data["aliases"]["a100"] == "a100-80gb-sxm"

    assert main(["gpus", "a100", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["resolved_id"] == "a100-80gb-sxm" and "a100-80gb-sxm" in one["resolution_note"]
    assert one["derived"]["ridge_point_flop_per_byte"]["bf16"] == 312e12 / 2039e9


def test_cli_table_and_detail(capsys):
    from planner.cli import main

    assert main(["gpus"]) == 0
    out = capsys.readouterr().out
    assert "a100-80gb-sxm" in out and "mi300x" in out
    assert main(["gpus", "a100"]) == 0
    out = capsys.readouterr().out
    assert "a100-80gb-sxm" in out and "nvidia-a100-datasheet" in out.replace("\n", "")


def test_cli_unknown_gpu_exits_2(capsys):
    from planner.cli import main

    assert main(["gpus", "a10"]) == 2
    assert "a10g" in capsys.readouterr().err


# -- your own GPU folder: --gpus DIR / PLANNER_GPUS --

def _user_gpu(tmp_path, new_id="my-b300", **replace):
    path, text = _copy(tmp_path, "h200", new_id)
    for old, new in replace.items():
        text = text.replace(old, new)
    path.write_text(text)
    return path


@pytest.fixture
def fresh_catalog(monkeypatch):
    monkeypatch.delenv(gpus.ENV_VAR, raising=False)
    yield
    gpus.use_gpu_dirs(None)


def test_new_parts_are_in_the_catalog_with_sources():
    catalog = gpus.load_catalog()
    b200, gb200, mi325x = catalog["b200"], catalog["gb200"], catalog["mi325x"]
    assert b200.architecture == "blackwell" and b200.peak_tflops.bf16 == 2250 and b200.bandwidth_gb_s == 8000
    assert gb200.peak_tflops.fp8 == 5000 and gb200.memory_gb == 186
    assert mi325x.memory_gb == 256 and mi325x.peak_tflops.bf16 == mi325x.peak_tflops.fp16 == 1307.4
    for spec in (b200, gb200, mi325x):
        for figure in spec.cited_figures():
            citation = spec.sources.get(figure) or spec.sources[figure.split(".")[0]]
            assert "https://" in citation
    assert gpus.get_gpu("hgx-b200").id == "b200"


def test_env_folder_adds_a_gpu_and_main_job_plans_for_it(tmp_path, monkeypatch, fresh_catalog, capsys):
    from planner.cli import main

    folder = tmp_path / "my-gpus"
    folder.mkdir()
    _user_gpu(folder, "my-b300", **{"memory_gb: 141": "memory_gb: 288"})
    monkeypatch.setenv(gpus.ENV_VAR, str(folder))
    spec = gpus.get_gpu("MY-B300")
    assert spec.memory_gb == 288 and gpus.is_user_gpu(spec)
    assert not gpus.is_user_gpu(gpus.get_gpu("h200"))

    model = tmp_path / "cfg"
    model.mkdir()
    from tiny import tiny_config

    (model / "config.json").write_text(tiny_config("llama").to_json_string())
    monkeypatch.delenv(gpus.ENV_VAR)
    out = tmp_path / "plan.json"
    code = main(["--goal", "p95-latency", "--gpu", "my-b300", "--gpus", str(folder), "--model", str(model),
                 "--no-measure", "--no-probe", "--prompt-len", "16", "--gen-len", "4", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    plan = json.loads(out.read_text())
    assert plan["gpu"] == "my-b300"


def test_user_file_overrides_a_builtin_gpu_by_id(tmp_path, fresh_catalog):
    path, text = _copy(tmp_path, "h200", "h200")
    path.write_text(text.replace("bandwidth_gb_s: 4800", "bandwidth_gb_s: 4900") + "\naliases: [h200-sxm]\n")
    gpus.use_gpu_dirs([tmp_path])
    spec = gpus.get_gpu("h200-sxm")
    assert spec.bandwidth_gb_s == 4900 and gpus.is_user_gpu(spec)
    assert gpus.get_gpu("h100").bandwidth_gb_s == 3352  # the rest of the catalog is untouched
    # without override (a plain extra folder), the same id is a duplicate
    with pytest.raises(InputError, match="already the id"):
        gpus.load_catalog([tmp_path])


def test_check_cli(tmp_path, fresh_catalog, capsys):
    from planner.cli import main

    _user_gpu(tmp_path, "my-b300")
    assert main(["gpus", "--check", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["gpus"] == [{"id": "my-b300", "file": str(tmp_path / "my-b300.yaml"),
                                                "replaces_builtin": False}]
    assert main(["gpus", "my-b300", "--gpus", str(tmp_path)]) == 0
    assert "your GPU folder" in capsys.readouterr().out.replace("\n", "")

    _user_gpu(tmp_path, "my-b300", **{"memory_gb: 141": "memory_gb: -5"})
    assert main(["gpus", "--check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "my-b300.yaml" in err and "memory_gb" in err


def test_unknown_gpu_says_how_to_add_one(capsys):
    from planner.cli import main

    assert main(["gpus", "b300"]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "unknown GPU 'b300'" in err and "--gpus DIR" in err and "PLANNER_GPUS" in err


def test_json_errors_go_to_stderr_as_json(capsys):
    from planner.cli import main

    assert main(["gpus", "zz-gpu", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    error = json.loads(captured.err)
    assert error["exit"] == 2 and "zz-gpu" in error["error"]


def test_example_gpu_folder_and_task_gate_policy_validate():
    from pathlib import Path

    from planner.gate.policy import load_policy

    examples = Path(__file__).resolve().parent.parent / "examples"
    catalog = gpus.load_catalog([examples / "gpus"], override=True)
    assert catalog["h100-nvl"].bandwidth_gb_s == 3900 and gpus.is_user_gpu(catalog["h100-nvl"])
    policy = load_policy(examples / "gate-tasks.yaml")
    assert policy.max_task_drop == {"*": 0.05} and policy.min_task_score == {"planner_next_line": 0.5}


def test_model_json_has_a_version(capsys, tmp_path):
    from planner.cli import main
    from tiny import tiny_config

    (tmp_path / "config.json").write_text(tiny_config("llama").to_json_string())
    assert main(["model", "--model", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1


def test_rules_piped_is_one_rule_per_line(capsys):
    from planner.cli import main
    from planner.decide.rules import load_rules

    assert main(["rules"]) == 0  # capsys: stdout is not a terminal
    lines = capsys.readouterr().out.splitlines()
    rules = load_rules([]).rules
    assert len(lines) == len(rules)
    assert [line.split("\t")[0] for line in lines] == [r.id for r in rules]
    assert all(len(line.split("\t")) == 3 for line in lines)
