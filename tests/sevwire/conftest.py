"""Keys for the sevwire tests, generated once per test session (RSA-4096 is slow)."""

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa


@pytest.fixture(scope="session")
def rsa4096_pair():
    """Two RSA-4096 keys: an ARK and an ASK (or a second, unrelated ARK)."""
    return (rsa.generate_private_key(65537, 4096), rsa.generate_private_key(65537, 4096))


@pytest.fixture(scope="session")
def rsa2048():
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="session")
def p384_keys():
    """Four P-384 keys: CEK, OCA, PEK, PDH."""
    return [ec.generate_private_key(ec.SECP384R1()) for _ in range(4)]
