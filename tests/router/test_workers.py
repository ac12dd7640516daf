"""Reading a worker's answers: error shapes and the LoRA activity series."""

from __future__ import annotations

from router.core.records import adapter_path
from router.workers import error_message, lora_activity


def test_lora_activity_takes_only_the_newest_series() -> None:
    text = (
        "# TYPE vllm:lora_requests_info gauge\n"
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="old",waiting_lora_adapters=""} 100.0\n'
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a,b",waiting_lora_adapters="c"} 300.0\n'
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters="x"} 200.0'
    )
    assert lora_activity(text) == {"a", "b", "c"}
    assert lora_activity("vllm:num_requests_running 0.0\n") == set()


def test_both_vllm_error_shapes_are_read() -> None:
    assert error_message(b'{"error":{"message":"m1","type":"t","param":null,"code":400}}') == "m1"
    assert error_message(b'{"object":"error","message":"m2","type":"t","param":null,"code":400}') == "m2"
    assert error_message(b"plain failure") == "plain failure"


def test_adapter_paths_for_vllm() -> None:
    assert adapter_path("file:///models/a") == "/models/a"
    assert adapter_path("/models/a") == "/models/a"
    assert adapter_path("hf://org/repo") == "org/repo"
