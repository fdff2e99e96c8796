"""Dataset loading: the real tfds path on small prepared datasets written by the tests."""
import numpy as np
import pytest

from prism_jax import data, tfds_fixture

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

TFDS_NAMES = ["mnist", "fashion_mnist", "cifar10", "celeb_a"]


@pytest.mark.parametrize("name", TFDS_NAMES)
def test_tfds_load_resize_crop_scale_split(name, tmp_path):
  sizes = {"train": 12, "test": 8} | ({"validation": 6} if name == "celeb_a" else {})
  tfds_fixture.write(name, str(tmp_path), sizes)
  splits = data.load(name, 16, data_dir=str(tmp_path))
  info = data.info(name)
  expect = {"train": 12, "valid": 6 if name == "celeb_a" else 4,
            "test": 8 if name == "celeb_a" else 4}
  for split, s in splits.items():
    assert s.images.shape == (expect[split], 16, 16, info.channels), split
    assert s.images.dtype == np.uint8 and s.labels.dtype == np.int64
    assert set(np.unique(s.labels)) <= set(range(info.num_classes))
    # Every image is constant 10 + 24 * label after crop + resize: a missing CelebA crop
    # would bring black borders in, a wrong resize or scaling would change the value.
    want = (10 + 24 * s.labels)[:, None, None, None]
    tol = 4 if name == "celeb_a" else 0        # JPEG
    assert np.all(np.abs(s.images.astype(int) - want) <= tol), split


def test_missing_tfds_data_names_the_prepare_command(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"tfds build cifar10 --data_dir={tmp_path}"):
    data.load("cifar10", 32, data_dir=str(tmp_path))


def test_aliases_and_info():
  assert data.info("fmnist") is data.INFO["fashion_mnist"]
  assert data.info("celeba").channels == 3 and data.info("mnist").channels == 1
  assert data.memory_bytes("celeb_a", 64) == 162_770 * 64 * 64 * 3     # ~2.0 GB as uint8
  with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
    data.info("imagenet")


def test_bad_image_size_before_loading(tmp_path):
  with pytest.raises(ValueError, match="power of two"):
    data.load("mnist", 28, data_dir=str(tmp_path))
