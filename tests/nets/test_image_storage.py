"""The 8-bit storage every anonymized face goes through before a recovery reads it."""

import numpy as np
import torch

from ifadit.api import to_uint8
from ifadit.nets.image import as_stored, uint8_levels


def test_stored_images_are_the_8_bit_levels_an_image_file_gives_back():
    images = torch.linspace(-1.3, 1.3, 3 * 8 * 8).reshape(1, 3, 8, 8)
    stored = as_stored(images)
    levels = (stored + 1) * 127.5
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)  # on the 8-bit grid
    inside = images.abs() <= 1
    assert (stored - images)[inside].abs().max() <= 1 / 255 + 1e-6  # rounding moves half a level at most
    assert stored.min() == -1 and stored.max() == 1  # out-of-range pixels clip, as a PNG clips them
    torch.testing.assert_close(as_stored(stored), stored)  # storing a stored image changes nothing
    # the same bytes the photo API writes
    pixels = to_uint8(images[0])
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, uint8_levels(images[0]).permute(1, 2, 0).numpy().astype(np.uint8))


def test_straight_through_storage_keeps_the_stored_values_and_the_identity_gradient():
    images = (torch.rand(2, 3, 4, 4) * 2 - 1).requires_grad_(True)
    weights = torch.randn(2, 3, 4, 4)
    stored = as_stored(images, straight_through=True)
    torch.testing.assert_close(stored, as_stored(images.detach()))
    (stored * weights).sum().backward()
    torch.testing.assert_close(images.grad, weights)
    assert not as_stored(images.detach()).requires_grad
