"""Bad input gets a clear error naming what is wrong."""

import json
import shutil
import subprocess
import sys

import pytest

from engine.engine import RequestError
from engine.model_config import ModelLoadError, load_model_spec
from engine.sampling import SamplingParams
from tests.engine.helpers import make_engine


def test_missing_model_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model_spec(tmp_path / "nope")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model_spec(tmp_path)


def test_malformed_config(tmp_path, llama_dir):
    folder = tmp_path / "m"
    shutil.copytree(llama_dir, folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model_spec(folder)


def test_missing_weights(tmp_path, llama_dir):
    folder = tmp_path / "m"
    shutil.copytree(llama_dir, folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model_spec(folder)


def test_unsupported_architecture_names_the_supported_ones(tmp_path, llama_dir):
    folder = tmp_path / "m"
    shutil.copytree(llama_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["GPT2LMHeadModel"], "gpt2"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="unsupported architecture.*LlamaForCausalLM.*Qwen2ForCausalLM"):
        load_model_spec(folder)


def test_weights_that_do_not_match_the_config(tmp_path, llama_dir):
    folder = tmp_path / "m"
    shutil.copytree(llama_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="missing"):
        make_engine(folder)


def test_prompt_longer_than_context_window(llama_dir):
    engine = make_engine(llama_dir, max_model_len=32)
    with pytest.raises(RequestError, match="context window is 32"):
        engine.add_request(list(range(3, 40)))
    assert not engine.has_unfinished()


def test_empty_prompt_and_out_of_vocab_tokens(llama_dir):
    engine = make_engine(llama_dir)
    with pytest.raises(RequestError, match="empty"):
        engine.add_request([])
    with pytest.raises(RequestError, match="outside the vocabulary"):
        engine.add_request([5, 10_000])


@pytest.mark.parametrize("kwargs, field", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
])
def test_invalid_sampling_parameters(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_duplicate_request_id(llama_dir):
    engine = make_engine(llama_dir)
    engine.add_request("Hello", request_id="x")
    with pytest.raises(RequestError, match="already in use"):
        engine.add_request("Hello", request_id="x")


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model", "hi"], "does not exist"),
    (["--max-tokens", "0", "hi"], "max_tokens"),
    (["--temperature", "-1", "hi"], "temperature"),
    (["--top-p", "2", "hi"], "top_p"),
])
def test_cli_reports_bad_input_in_one_line(args, message, llama_dir):
    if "--model" not in args:
        args = ["--model", str(llama_dir)] + args
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "generate", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_cli_prompt_too_long(llama_dir):
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "generate", "--model", str(llama_dir),
                           "--device", "cpu", "word " * 2000], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "context window" in proc.stderr and "Traceback" not in proc.stderr
