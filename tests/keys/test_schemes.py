"""Key schemes: stable SHAKE-256 expansion, known answers in a fresh process, and key sensitivity."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from ifadit import registry
from ifadit.keys import BitsKeyScheme, KeyScheme, MappingKeyScheme, SecretKey
from ifadit.testing import KEY_SCHEME_CHECKS, KeySchemeContract, check_key_scheme

FIXED = SecretKey(bytes(range(32)))
# Pinned answers for the fixed key: the construction is versioned; changing it must fail this test.
KAT = {
    "mapping": (
        "0fcdeadebb0ab08d3f72b234bf953854d21c4c956f36bf7e1290d6e000d8ad3e",
        [0.8649243712425232, 0.9607097506523132, 0.6108370423316956, 0.900540828704834],
    ),
    "bits": (
        "91b5f36c14b2f94fb720122436d8c1211a40d2b60e6579b06c6709a8b5887d74",
        [1.0, 1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0],
    ),
}


def test_expansion_follows_the_documented_shake256_construction():
    material = bytes(range(32))
    stream = hashlib.shake_256(b"ifadit/expand/v1\x00mapping\x00" + material).digest(4 * 512)
    words = np.frombuffer(stream, dtype=">u4") >> 9
    expected = (0.5 + words / 2.0**24).astype(np.float32)
    np.testing.assert_array_equal(MappingKeyScheme(512).expand(FIXED), expected)
    bits = np.unpackbits(
        np.frombuffer(
            hashlib.shake_256(b"ifadit/expand/v1\x00bits\x00" + material).digest(64), dtype=np.uint8
        )
    )
    np.testing.assert_array_equal(BitsKeyScheme(512).expand(FIXED), bits * 2.0 - 1.0)


def test_known_answers_in_a_fresh_process():
    code = (
        "import hashlib; from ifadit import registry; from ifadit.keys import SecretKey\n"
        "k = SecretKey(bytes(range(32)))\n"
        "for name in ('mapping', 'bits'):\n"
        "    raw = registry.create('key_schemes', name, dim=512).raw(k)[0].numpy()\n"
        "    print(name, hashlib.sha256(raw.tobytes()).hexdigest(), raw[:8].tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    for name, (digest, head) in KAT.items():
        got_digest, got_head = lines[name].split(" ", 1)
        assert got_digest == digest
        assert eval(got_head)[: len(head)] == head


def test_mapping_scheme_condition_is_reproducible_from_its_state_dict():
    a = MappingKeyScheme(512, seed=3)
    b = MappingKeyScheme(512, seed=99)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(FIXED), b(FIXED), rtol=0, atol=0)
    assert not torch.equal(a(FIXED), MappingKeyScheme(512, seed=99)(FIXED))


def test_mapping_raw_range_and_bits_values():
    raws = torch.cat([MappingKeyScheme(512).raw(SecretKey.generate()) for _ in range(16)])
    assert raws.dtype == torch.float32 and raws.min() >= 0.5 and raws.max() < 1.0
    bits = BitsKeyScheme(512).raw([SecretKey.generate() for _ in range(4)])
    assert set(bits.unique().tolist()) == {-1.0, 1.0}
    assert abs(bits.mean().item()) < 0.1


SCHEME_NAMES = sorted(registry.available("key_schemes"))


@pytest.mark.parametrize("check", list(KEY_SCHEME_CHECKS))
@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_key_scheme_contract(name: str, check: str) -> None:
    """Determinism for a secret, key sensitivity down to one bit, broadcasting and per-sample batches,
    clear errors, and seeded fresh keys that spread apart (``ifadit.testing``'s key-scheme contract)."""
    KEY_SCHEME_CHECKS[check](name, KeySchemeContract(dim=512))


def test_contract_on_a_built_scheme_skips_only_what_needs_a_rebuild() -> None:
    report = check_key_scheme(BitsKeyScheme(64))
    assert set(report.skipped) == {"expansion_is_deterministic", "condition_is_reproducible"}
    assert report.passed == ("key_sensitivity", "batch_expansion", "sample")


class _RandomScheme(KeyScheme):
    """A broken scheme: it expands through numpy's global RNG instead of the secret."""

    def expand(self, secret: SecretKey) -> np.ndarray:
        return np.random.default_rng().standard_normal(self.dim).astype(np.float32)


def test_a_scheme_that_ignores_the_secret_fails_the_contract() -> None:
    with pytest.raises(AssertionError, match="_RandomScheme: expand gives another vector"):
        check_key_scheme(_RandomScheme, KeySchemeContract(dim=16))


def test_generator_mapping_network_can_replace_the_own_mlp():
    scheme = MappingKeyScheme(8, num_layers=2)
    mapping = torch.nn.Linear(8, 8)
    scheme.attach_mapping(mapping)
    raw = scheme.raw(FIXED)
    torch.testing.assert_close(
        scheme(FIXED), mapping(raw)
    )  # raw [0.5, 1) vector, as the official code feeds it
    assert "mapping.weight" not in "".join(scheme.state_dict())  # not saved twice
