"""PyTorch cross-check of a partrain run (run by tests/pytorch_crosscheck.rs with the venv's torch):

    .venv/bin/python tests/crosscheck.py RUN_DIR DATA_DIR TEST_LIMIT

Builds seed 001's net in PyTorch, loads RUN_DIR/model.safetensors with strict=True, evaluates the
same MNIST test slice and asserts the accuracy in RUN_DIR/summary.json to 0.01 points.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file

# The same PyTorch net and IDX reader as the benchmark references.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from reference import MnistCnn, read_idx  # noqa: E402


def main():
    run_dir, data_dir, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = MnistCnn()
    model.load_state_dict(load_file(f"{run_dir}/model.safetensors"), strict=True)
    model.eval()
    images = read_idx(f"{data_dir}/t10k-images-idx3-ubyte", limit).float() / 255.0
    images = (images - 0.1307) / 0.3081
    labels = read_idx(f"{data_dir}/t10k-labels-idx1-ubyte", limit)
    with torch.no_grad():
        accuracy = 100.0 * (model(images).argmax(1) == labels).float().mean().item()
    reported = json.load(open(f"{run_dir}/summary.json"))["final_test_accuracy"]
    print(f"pytorch accuracy {accuracy:.4f}%, partrain summary {reported:.4f}%")
    assert abs(accuracy - reported) <= 0.01, f"PyTorch {accuracy} vs partrain {reported}"


if __name__ == "__main__":
    main()
