"""restic's authenticated encryption: AES-256-CTR with a Poly1305-AES MAC, and scrypt key files.

Every encrypted object is IV(16) || ciphertext || MAC(16); the MAC covers the ciphertext only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.poly1305 import Poly1305

from stash_runner.errors import IntegrityError, WrongPassword

IV_SIZE = 16
MAC_SIZE = 16
OVERHEAD = IV_SIZE + MAC_SIZE

# What we write for new key files: restic accepts any parameters; these cost ~0.2 s and 64 MiB.
DEFAULT_SCRYPT = {"N": 32768, "r": 8, "p": 1}


@dataclass(frozen=True)
class Key:
    """An AES-256 key and a Poly1305-AES MAC key (k for AES, r for the polynomial)."""

    encrypt_key: bytes = field(repr=False)
    mac_k: bytes = field(repr=False)
    mac_r: bytes = field(repr=False)

    @classmethod
    def random(cls) -> Key:
        return cls(os.urandom(32), os.urandom(16), os.urandom(16))

    @classmethod
    def from_kdf_output(cls, raw: bytes) -> Key:
        return cls(raw[0:32], raw[32:48], raw[48:64])

    def _mac(self, iv: bytes, ciphertext: bytes) -> bytes:
        ecb = Cipher(algorithms.AES(self.mac_k), modes.ECB()).encryptor()
        one_time_key = self.mac_r + ecb.update(iv) + ecb.finalize()
        return Poly1305.generate_tag(one_time_key, ciphertext)

    def encrypt(self, plaintext: bytes) -> bytes:
        iv = os.urandom(IV_SIZE)
        enc = Cipher(algorithms.AES(self.encrypt_key), modes.CTR(iv)).encryptor()
        ciphertext = enc.update(plaintext) + enc.finalize()
        return b"".join((iv, ciphertext, self._mac(iv, ciphertext)))

    def decrypt(self, data: bytes | memoryview) -> bytes:
        if len(data) < OVERHEAD:
            raise IntegrityError("encrypted data is shorter than IV and MAC")
        data = memoryview(data)
        iv, ciphertext, tag = bytes(data[:IV_SIZE]), data[IV_SIZE:-MAC_SIZE], bytes(data[-MAC_SIZE:])
        if not hmac.compare_digest(self._mac(iv, ciphertext), tag):
            raise IntegrityError("ciphertext verification failed (MAC mismatch)")
        dec = Cipher(algorithms.AES(self.encrypt_key), modes.CTR(iv)).decryptor()
        return dec.update(ciphertext) + dec.finalize()

    def to_json(self) -> dict:
        b64 = base64.standard_b64encode
        return {
            "mac": {"k": b64(self.mac_k).decode(), "r": b64(self.mac_r).decode()},
            "encrypt": b64(self.encrypt_key).decode(),
        }

    @classmethod
    def from_json(cls, obj: dict) -> Key:
        b64 = base64.standard_b64decode
        return cls(b64(obj["encrypt"]), b64(obj["mac"]["k"]), b64(obj["mac"]["r"]))


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> Key:
    maxmem = 128 * r * (n + p + 2) + (1 << 20)
    raw = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=64, maxmem=maxmem)
    return Key.from_kdf_output(raw)


def open_key_file(keyfile: dict, password: bytes) -> Key:
    """Return the master key wrapped in a restic key file, or raise WrongPassword."""
    if keyfile.get("kdf") != "scrypt":
        raise IntegrityError(f"key file uses unsupported KDF {keyfile.get('kdf')!r}")
    user_key = _scrypt(
        password, base64.standard_b64decode(keyfile["salt"]), keyfile["N"], keyfile["r"], keyfile["p"]
    )
    try:
        plain = user_key.decrypt(base64.standard_b64decode(keyfile["data"]))
    except IntegrityError:
        raise WrongPassword("wrong password") from None
    return Key.from_json(json.loads(plain))


def make_key_file(master: Key, password: bytes, username: str, hostname: str, created: str) -> dict:
    """A new restic key file (plain JSON) that wraps master under password."""
    salt = os.urandom(64)
    params = DEFAULT_SCRYPT
    user_key = _scrypt(password, salt, params["N"], params["r"], params["p"])
    data = user_key.encrypt(json.dumps(master.to_json()).encode())
    return {
        "created": created,
        "username": username,
        "hostname": hostname,
        "kdf": "scrypt",
        **params,
        "salt": base64.standard_b64encode(salt).decode(),
        "data": base64.standard_b64encode(data).decode(),
    }
