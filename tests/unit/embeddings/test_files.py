"""The embedding file formats read into one shape, and how a prompt names an embedding."""

from __future__ import annotations

import pytest
import torch

from sdapi.embeddings.files import EmbeddingFileError, parse_embedding, read_embedding
from sdapi.embeddings.library import EmbeddingLibrary, name_pattern
from sdapi.errors import InvalidParameter
from tests.support.embedding_files import (
    vectors,
    write_a1111_pt,
    write_a1111_safetensors,
    write_diffusers,
    write_sdxl,
)


@pytest.mark.parametrize("writer", [write_a1111_pt, write_a1111_safetensors, write_diffusers])
def test_every_single_encoder_format_reads_to_the_same_vectors(tmp_path, writer):
    matrix = vectors(3, 16, seed=1)
    suffix = ".pt" if writer is write_a1111_pt else ".safetensors"
    read = read_embedding(writer(tmp_path / f"emb{suffix}", matrix))
    assert read.vectors == 3 and read.widths == (16,)
    assert torch.equal(read.parts["text_encoder"], matrix)


def test_the_sdxl_form_fills_both_encoders(tmp_path):
    first, second = vectors(2, 8, seed=1), vectors(2, 12, seed=2)
    read = read_embedding(write_sdxl(tmp_path / "xl.safetensors", first, second))
    assert read.widths == (8, 12) and read.vectors == 2
    assert torch.equal(read.parts["text_encoder_2"], second)


def test_a_single_vector_tensor_becomes_one_row():
    assert parse_embedding({"<tok>": torch.ones(5)}).parts["text_encoder"].shape == (1, 5)


@pytest.mark.parametrize(
    "state, words",
    [
        ({"clip_l": torch.ones(1, 4)}, "clip_g"),
        ({"clip_l": torch.ones(1, 4), "clip_g": torch.ones(2, 4)}, "向量数"),
        ({"emb_params": torch.ones(2, 3, 4)}, "形状"),
        ({"emb_params": torch.tensor([[float("inf")]])}, "NaN"),
        ({"a": torch.ones(1), "b": torch.ones(1)}, "格式"),
        (["not", "a", "dict"], "张量字典"),
    ],
)
def test_what_is_not_an_embedding_says_why(state, words):
    with pytest.raises(EmbeddingFileError, match=words):
        parse_embedding(state)


def test_a_pickle_that_would_run_code_is_not_loaded(tmp_path):
    import pickle

    class Sneaky:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "sneaky.pt"
    path.write_bytes(pickle.dumps({"string_to_param": {"*": Sneaky()}}))
    with pytest.raises(EmbeddingFileError, match="不执行"):
        read_embedding(path)


@pytest.mark.parametrize(
    "prompt, named",
    [
        ("by my-style, 4k", True),
        ("(my-style:1.2)", True),
        ("MY-STYLE", True),
        ("my-styles", False),
        ("not-my-style", False),
        ("my-style_2", False),
        ("my style", False),
    ],
)
def test_a_name_is_a_word_of_its_own(prompt, named):
    assert bool(name_pattern("my-style").search(prompt)) is named


def test_the_library_resolves_names_and_checks_widths(tmp_path):
    write_a1111_safetensors(tmp_path / "alpha.safetensors", vectors(1, 16, seed=1))
    write_a1111_pt(tmp_path / "alpha.pt", vectors(1, 8, seed=2))  # the .safetensors of a stem wins
    write_diffusers(tmp_path / "beta.safetensors", vectors(1, 8, seed=3))
    library = EmbeddingLibrary(tmp_path, max_file_mb=1)
    library.scan()
    assert [(entry.name, entry.widths) for entry in library.entries()] == [("alpha", [16]), ("beta", [8])]
    specs = library.named_in(["alpha and more", None], (16,))
    assert [spec.name for spec in specs] == ["alpha"]
    assert library.path_for(specs[0]) == tmp_path / "alpha.safetensors"
    with pytest.raises(InvalidParameter, match="beta"):
        library.named_in(["x", "beta"], (16,))
    assert [spec.name for spec in library.named_in(["beta"], None)] == ["beta"]  # widths unknown: the worker checks
    assert library.entries((16,))[1].fits is False


def test_a_file_over_the_size_limit_is_listed_with_an_error(tmp_path):
    write_a1111_safetensors(tmp_path / "big.safetensors", vectors(64, 1024, seed=1))
    library = EmbeddingLibrary(tmp_path, max_file_mb=0.01)
    library.scan()
    (entry,) = library.entries()
    assert entry.fits is False and "max_file_mb" in (entry.error or "")
