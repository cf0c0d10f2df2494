#!/usr/bin/env python3
"""An independent verifier of Strata bundles and pointers, written from
docs/FORMAT.md alone. Uses only `cryptography` and `zstandard`.

    verify_bundle.py --pubkey KEY.pub --bundle FILE [--pointer FILE] [--channel stable]
                     [--threshold 1] [--store DIR]

A format 3 bundle is a signed root over objects: they are read, one by one,
from the file store DIR (default: the directory above the bundle's
`snapshots/`), each checked against the hash its parent names.

Exit 0 and a summary when everything verifies; exit 1 with the reason otherwise.
"""

import argparse
import hashlib
import io
import json
import os
import stat
import struct
import sys
from datetime import datetime, timezone

import rfc8785
import zstandard
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MAGIC = b"STRATAB1"
MAX_PART = 65536
MAX_WINDOW_LOG = 27
KINDS = {
    1: "layer1", 2: "config", 3: "prompt", 4: "route", 5: "frame", 6: "tenant",
    7: "object", 8: "page", 9: "route_page", 10: "chunk",
}
DICT_MAGIC = b"\x37\xa4\x30\xec"
SEPARATOR = "\n\n---\n\n"


class Refused(Exception):
    pass


# Ed25519 over edwards25519 (RFC 8032), only to refuse what `cryptography`
# accepts: small-order public keys and R, and non-canonical encodings
# (docs/FORMAT.md, "Keys and key ids").
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def decode_point(b):
    """The affine point of a 32-byte encoding, or None if it is not canonical."""
    y = int.from_bytes(b, "little") & ((1 << 255) - 1)
    sign = b[31] >> 7
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    if x == 0 and sign:
        return None
    if x % 2 != sign:
        x = P - x
    return (x, y)


def add(a, b):
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P, (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P)


def small_order(point):
    for _ in range(3):
        point = add(point, point)
    return point == (0, 1)


def strict_ok(raw_key, sig):
    """What verify_strict adds to RFC 8032: A and R canonical and not of
    small order, S below the group order."""
    if len(sig) != 64:
        return False
    a, r = decode_point(raw_key), decode_point(sig[:32])
    return a is not None and r is not None and not small_order(a) and not small_order(r) \
        and int.from_bytes(sig[32:], "little") < L


def canonical(obj):
    # RFC 8785 (JCS): any JCS library gives the same bytes.
    try:
        return rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError as e:
        raise Refused(f"not representable in RFC 8785 JSON: {e}")


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def load_keys(paths):
    keys = {}
    for p in paths:
        key = serialization.load_pem_public_key(open(p, "rb").read())
        if not isinstance(key, Ed25519PublicKey):
            raise Refused(f"{p}: not an Ed25519 public key")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        keys[sha256(raw)] = (raw, key)
    return keys


def check_signatures(message, entries, keys, threshold, what):
    if not isinstance(entries, list):
        raise Refused(f"{what}: signatures are not a list")
    valid = set()
    for e in entries:
        found = keys.get(e.get("key_id"))
        if found is None:
            continue
        raw, key = found
        try:
            sig = bytes.fromhex(e["sig"])
            if not strict_ok(raw, sig):
                raise InvalidSignature("small-order or non-canonical key or signature")
            key.verify(sig, message)
        except (InvalidSignature, ValueError) as err:
            raise Refused(f"{what}: signature by trusted key {e['key_id']} does not verify") from err
        valid.add(e["key_id"])
    if len(valid) < threshold:
        raise Refused(f"{what}: {len(valid)} valid trusted signature(s), {threshold} required")


def parse_time(s):
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def verify_pointer(data, keys, threshold, channel):
    doc = json.loads(data)
    if set(doc) != {"signatures", "signed"}:
        raise Refused("pointer: unexpected top-level fields")
    if canonical(doc) != data:
        raise Refused("pointer: not canonical JSON")
    signed = doc["signed"]
    check_signatures(canonical(signed), doc["signatures"], keys, threshold, "pointer")
    expected = {"type", "name", "version", "bundle", "bundle_sha256", "bundle_size", "created_at", "expires_at"}
    if set(signed) - {"tenants"} != expected:
        raise Refused(f"pointer: fields {sorted(signed)} differ from the format")
    if "tenants" in signed and (type(signed["tenants"]) is not int or signed["tenants"] < 0):
        raise Refused("pointer: tenants is not a count")
    if signed["type"] != "strata-channel" or signed["name"] != channel:
        raise Refused(f"pointer: is a {signed['type']} for {signed['name']}, expected strata-channel for {channel}")
    parse_time(signed["created_at"])
    if parse_time(signed["expires_at"]) < datetime.now(timezone.utc):
        raise Refused(f"pointer: expired at {signed['expires_at']}")
    if signed["bundle"] != f"snapshots/{signed['version']:020d}.bundle":
        raise Refused("pointer: bundle key does not match its version")
    return signed


def read_exact(f, n, what):
    b = f.read(n)
    if len(b) != n:
        raise Refused(f"bundle: truncated in {what}")
    return b


def verify_bundle(data, keys, threshold, max_bytes=1 << 30, store=None):
    f = io.BytesIO(data)
    if read_exact(f, 8, "magic") != MAGIC:
        raise Refused("bundle: bad magic")
    (m,) = struct.unpack("<I", read_exact(f, 4, "manifest length"))
    if m > MAX_PART:
        raise Refused("bundle: manifest too large")
    manifest_bytes = read_exact(f, m, "manifest")
    (s,) = struct.unpack("<I", read_exact(f, 4, "signatures length"))
    if s > MAX_PART:
        raise Refused("bundle: signature block too large")
    sigs = json.loads(read_exact(f, s, "signatures"))
    manifest = json.loads(manifest_bytes)
    if manifest.get("type") != "strata-bundle" or manifest.get("format") not in (2, 3):
        raise Refused("bundle: not a format 2 or 3 strata bundle")
    if canonical(manifest) != manifest_bytes:
        raise Refused("bundle: manifest is not canonical JSON")
    parse_time(manifest["created_at"])
    parse_time(manifest["expires_at"])
    check_signatures(manifest_bytes, sigs, keys, threshold, "bundle manifest")
    if manifest["payload_size"] > max_bytes or manifest["payload_raw_size"] > max_bytes:
        raise Refused("bundle: over the size limit")
    payload = f.read(manifest["payload_size"])
    if len(payload) != manifest["payload_size"]:
        raise Refused("bundle: truncated payload")
    if f.read(1):
        raise Refused("bundle: trailing bytes after the payload")
    if sha256(payload) != manifest["payload_sha256"]:
        raise Refused("bundle: payload hash mismatch")

    if manifest["format"] == 3:
        return manifest, verify_tree(manifest, payload, store, max_bytes)
    # Only now decompress, frame by frame, never beyond the signed sizes.
    limit = manifest["payload_raw_size"]
    index_size = manifest["index_size"]
    if not 0 < index_size <= len(payload):
        raise Refused("bundle: index_size outside the payload")
    index = decompress(payload[:index_size], limit, "index")
    starts = []
    index_records = decode_records(index, "index", starts)
    if not index_records or index_records[0][0] != "layer1":
        raise Refused("bundle: the index does not start with Layer 1")
    records = [index_records[0]]
    raw_total, offset, i = len(index), index_size, 1
    while i < len(index_records) and index_records[i][0] == "frame":
        size, raw_size = struct.unpack("<QQ", index_records[i][2])
        i += 1
        tenants = []
        while i < len(index_records) and index_records[i][0] == "tenant":
            tenants.append((index_records[i][1], index_records[i][2].decode()))
            i += 1
        if not tenants:
            raise Refused("bundle: a frame lists no tenants")
        raw_total += raw_size
        if offset + size > len(payload) or raw_total > limit:
            raise Refused("bundle: frames exceed the payload's signed sizes")
        body = decompress(payload[offset:offset + size], raw_size, f"frame at {offset}")
        if len(body) != raw_size:
            raise Refused(f"bundle: frame at {offset} is {len(body)} bytes, the index says {raw_size}")
        offset += size
        body_records = decode_records(body, f"frame at {offset}")
        expected = [(kind, t) for t, _ in tenants for kind in ("config", "prompt")]
        if [(kind, key) for kind, key, _ in body_records] != expected:
            raise Refused("bundle: a frame does not hold exactly the tenants its index record lists")
        for (tenant, config_hash), (_, _, config) in zip(tenants, body_records[0::2]):
            if json.loads(config).get("config_hash") != config_hash:
                raise Refused(f"bundle: the index lists another config_hash for {tenant}")
        records += body_records
    routes = index_records[i:]
    routes_start = starts[i]
    if any(kind != "route" for kind, _, _ in routes):
        raise Refused("bundle: the index holds something other than routes after the frames")
    numbers = [number.encode() for _, number, _ in routes]
    if any(a >= b for a, b in zip(numbers, numbers[1:])):
        raise Refused("bundle: routes are not unique and in ascending byte order")
    if sha256(index[routes_start:]) != manifest["routes_sha256"]:
        raise Refused("bundle: the route records do not hash to the manifest's routes_sha256")
    body_count = len(records) - 1
    records += routes
    tenant_ids = [key for kind, key, _ in index_records if kind == "tenant"]
    if tenant_ids != sorted(set(tenant_ids), key=str.encode):
        raise Refused("bundle: tenants are not in ascending id order")
    if offset != len(payload) or raw_total != limit:
        raise Refused("bundle: frames do not add up to the payload's signed sizes")
    if len(index_records) + body_count != manifest["record_count"]:
        raise Refused("bundle: record count differs from the manifest")
    return manifest, records


def decompress(frame, size, what, dictionary=None):
    if frame[:4] != b"\x28\xb5\x2f\xfd" or len(frame) < 5 or not frame[4] & 0x04:
        raise Refused(f"bundle: {what} is not a zstd frame with its content checksum")
    if dictionary is None:
        dctx = zstandard.ZstdDecompressor(max_window_size=1 << MAX_WINDOW_LOG)
    else:
        dctx = zstandard.ZstdDecompressor(
            dict_data=zstandard.ZstdCompressionDict(dictionary), max_window_size=1 << MAX_WINDOW_LOG
        )
    raw = dctx.stream_reader(io.BytesIO(frame)).read(size + 1)
    if len(raw) > size:
        raise Refused(f"bundle: {what} decompresses beyond its signed size")
    return raw


def decode_records(raw, what, starts=None):
    """The records of `raw`; `starts` collects where each begins (and the end)."""
    starts = [] if starts is None else starts
    records = []
    i = 0
    while i < len(raw):
        kind = raw[i]
        if kind not in KINDS or i + 5 > len(raw):
            raise Refused(f"bundle: bad record in {what} at byte {i}")
        (k,) = struct.unpack_from("<I", raw, i + 1)
        key = raw[i + 5 : i + 5 + k].decode()
        j = i + 5 + k
        (v,) = struct.unpack_from("<I", raw, j)
        value = raw[j + 4 : j + 4 + v]
        if len(value) != v:
            raise Refused(f"bundle: record in {what} runs past its end")
        records.append((KINDS[kind], key, value))
        starts.append(i)
        i = j + 4 + v
    starts.append(len(raw))
    return records


def ref(value, what):
    """An object reference: SHA-256, size, decompressed size, count."""
    if len(value) != 56:
        raise Refused(f"bundle: {what} is not a 56-byte object reference")
    size, raw_size, count = struct.unpack("<QQQ", value[32:56])
    return value[:32].hex(), size, raw_size, count


def read_object(store, r, what, max_size=1 << 30):
    """The object `r` names, from the file store `store`: a regular file
    (opened without waiting on a FIFO), its size and hash checked."""
    sha, size, _, _ = r
    if size > max_size:
        raise Refused(f"bundle: {what} {sha} is {size} bytes, over the limit")
    path = f"{store}/objects/{sha[:2]}/{sha}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise Refused(f"bundle: {what} {sha} cannot be read: {e}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"bundle: {what} {sha} cannot be read: not a regular file")
        if st.st_size != size:
            raise Refused(f"bundle: {what} {sha} is {st.st_size} bytes, its parent names {size}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(size + 1)
    except OSError as e:
        raise Refused(f"bundle: {what} {sha} cannot be read: {e}")
    finally:
        os.close(fd)
    if len(data) != size or sha256(data) != sha:
        raise Refused(f"bundle: {what} {sha} does not have the size and SHA-256 its parent names")
    return data


def unpack(store, r, what, dictionary=None, max_raw=64 << 20):
    sha, _, raw_size, _ = r
    if raw_size > max_raw:
        raise Refused(f"bundle: {what} {sha} declares {raw_size} bytes, over the limit")
    raw = decompress(read_object(store, r, what), raw_size, f"{what} {sha}", dictionary)
    if len(raw) != raw_size:
        raise Refused(f"bundle: {what} {sha} is {len(raw)} bytes, its parent says {raw_size}")
    return raw


def keyed(records, kind, what, first=None, end=None):
    """The keys of `records`, all of `kind`, strictly ascending (by bytes), the
    first equal to `first`, all before `end`."""
    keys = [k.encode() for _, k, _ in records]
    if any(r[0] != kind for r in records):
        raise Refused(f"bundle: {what} holds a record other than a {kind}")
    if any(a >= b for a, b in zip(keys, keys[1:])):
        raise Refused(f"bundle: {what} lists a {kind} twice or out of order")
    if first is not None and (not keys or keys[0] != first.encode()):
        raise Refused(f"bundle: {what} does not start where its parent says")
    if end is not None and keys and keys[-1] >= end.encode():
        raise Refused(f"bundle: {what} holds a {kind} of the next one")


def verify_tree(manifest, payload, store, max_bytes):
    """Format 3: the root frame, then every object it reaches; returns the
    snapshot's records in format 2's logical order."""
    if store is None:
        raise Refused("bundle: a format 3 root needs its store (--store DIR)")
    if manifest["index_size"] != manifest["payload_size"]:
        raise Refused("bundle: a format 3 root is one frame: index_size must be payload_size")
    root = decompress(payload, manifest["payload_raw_size"], "root")
    if len(root) != manifest["payload_raw_size"]:
        raise Refused("bundle: the root does not decompress to payload_raw_size")
    recs = decode_records(root, "root")
    if not recs or recs[0][:2] != ("object", "layer1"):
        raise Refused("bundle: the root does not start with Layer 1")
    layer1_ref = ref(recs[0][2], "layer1")
    i, dictionary = 1, None
    if i < len(recs) and recs[i][:2] == ("object", "dictionary"):
        d = ref(recs[i][2], "dictionary")
        if d[1] != d[2] or d[3] != 0 or d[1] > 1 << 20:
            raise Refused("bundle: the dictionary's reference is not its own, or it is too large")
        dictionary = read_object(store, d, "dictionary")
        if not dictionary.startswith(DICT_MAGIC):
            raise Refused("bundle: the dictionary is not a zstd dictionary")
        i += 1
    pages = [r for r in recs[i:] if r[0] == "page"]
    route_pages = recs[i + len(pages):]
    keyed(pages, "page", "the root")
    keyed(route_pages, "route_page", "the root")
    layer1 = decode_records(unpack(store, layer1_ref, "Layer 1"), "Layer 1")
    if [r[:2] for r in layer1] != [("layer1", "layer1")] or layer1_ref[3] != 1:
        raise Refused("bundle: the Layer 1 object is not exactly one Layer 1 record")
    records = [layer1[0]]
    total = 0
    for n, (_, first, value) in enumerate(pages):
        page_ref = ref(value, "page")
        end = pages[n + 1][1] if n + 1 < len(pages) else None
        chunks = decode_records(unpack(store, page_ref, "page"), "page")
        if not chunks:
            raise Refused(f"bundle: page {page_ref[0]} names no chunk")
        keyed(chunks, "chunk", f"page {page_ref[0]}", first, end)
        if sum(ref(v[:56], "chunk")[3] for _, _, v in chunks) != page_ref[3]:
            raise Refused(f"bundle: page {page_ref[0]} holds another tenant count than the root says")
        for m, (_, chunk_first, value) in enumerate(chunks):
            if len(value) != 88:
                raise Refused("bundle: a chunk record's value is not 88 bytes")
            c = ref(value[:56], "chunk")
            total += c[1]
            if total > max_bytes:
                raise Refused("bundle: the objects are over the size limit")
            chunk_end = chunks[m + 1][1] if m + 1 < len(chunks) else end
            body = decode_records(unpack(store, c, "chunk", dictionary), f"chunk {c[0]}")
            if len(body) != 3 * c[3] or c[3] == 0:
                raise Refused(f"bundle: chunk {c[0]} holds another tenant count than its page says")
            tenants = body[0::3]
            keyed(tenants, "tenant", f"chunk {c[0]}", chunk_first, chunk_end)
            for (_, tenant, hash_), (k2, t2, config), (k3, t3, prompt) in zip(body[0::3], body[1::3], body[2::3]):
                if (k2, t2, k3, t3) != ("config", tenant, "prompt", tenant):
                    raise Refused(f"bundle: chunk {c[0]} does not hold {tenant}'s config and prompt after its tenant record")
                if json.loads(config).get("config_hash") != hash_.decode():
                    raise Refused(f"bundle: the tenant record of {tenant} names another config_hash")
                records += [("config", tenant, config), ("prompt", tenant, prompt)]
    routes_raw = b""
    for n, (_, first, value) in enumerate(route_pages):
        r = ref(value, "route page")
        end = route_pages[n + 1][1] if n + 1 < len(route_pages) else None
        raw = unpack(store, r, "route page")
        routes = decode_records(raw, "route page")
        if not routes:
            raise Refused(f"bundle: route page {r[0]} holds no route")
        keyed(routes, "route", f"route page {r[0]}", first, end)
        if len(routes) != r[3]:
            raise Refused(f"bundle: route page {r[0]} holds another route count than the root says")
        routes_raw += raw
        records += routes
    if sha256(routes_raw) != manifest["routes_sha256"]:
        raise Refused("bundle: the route records do not hash to the manifest's routes_sha256")
    count = sum(1 for r in records if r[0] == "config")
    routes = sum(1 for r in records if r[0] == "route")
    if count != manifest["tenant_count"] or sum(ref(v, "page")[3] for _, _, v in pages) != count:
        raise Refused("bundle: tenant count differs from the manifest")
    if 1 + 3 * count + routes != manifest["record_count"]:
        raise Refused("bundle: record count differs from the manifest")
    return records


def check_contents(manifest, records):
    kinds = [r[0] for r in records]
    if kinds.count("layer1") != 1 or kinds[0] != "layer1":
        raise Refused("bundle: Layer 1 must be the first and only layer1 record")
    layer1 = json.loads(records[0][2])
    configs = {k: v for kind, k, v in records if kind == "config"}
    prompts = {k: v.decode() for kind, k, v in records if kind == "prompt"}
    routes = {k: v.decode() for kind, k, v in records if kind == "route"}
    if len(configs) != manifest["tenant_count"] or set(configs) != set(prompts):
        raise Refused("bundle: configs and prompts do not match the tenant count")
    for tenant, value in configs.items():
        cfg = json.loads(value)
        if canonical(cfg) != value:
            raise Refused(f"bundle: config of {tenant} is not canonical JSON")
        claimed = cfg.pop("config_hash")
        if sha256(canonical(cfg)) != claimed:
            raise Refused(f"bundle: config hash of {tenant} does not match")
        if not prompts[tenant].startswith(layer1["base_prompt"] + SEPARATOR):
            raise Refused(f"bundle: prompt of {tenant} does not start with Layer 1")
    for number, tenant in routes.items():
        if tenant not in configs:
            raise Refused(f"bundle: route {number} names unknown tenant {tenant}")
    return len(configs), len(routes)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pubkey", action="append", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--pointer")
    ap.add_argument("--channel", default="stable")
    ap.add_argument("--threshold", type=int, default=1)
    ap.add_argument("--store")
    args = ap.parse_args()
    try:
        keys = load_keys(args.pubkey)
        data = open(args.bundle, "rb").read()
        pointer = None
        if args.pointer:
            pointer = verify_pointer(open(args.pointer, "rb").read(), keys, args.threshold, args.channel)
            if len(data) != pointer["bundle_size"] or sha256(data) != pointer["bundle_sha256"]:
                raise Refused("bundle: size or SHA-256 differs from the signed pointer")
        store = args.store
        if store is None:
            parent = os.path.dirname(os.path.abspath(args.bundle))
            if os.path.basename(parent) == "snapshots":
                store = os.path.dirname(parent)
        manifest, records = verify_bundle(data, keys, args.threshold, store=store)
        if pointer and manifest["version"] != pointer["version"]:
            raise Refused("bundle: manifest version differs from the pointer")
        if pointer and pointer.get("tenants", manifest["tenant_count"]) != manifest["tenant_count"]:
            raise Refused("bundle: manifest tenant count differs from the pointer")
        tenants, routes = check_contents(manifest, records)
    except (Refused, ValueError, KeyError, json.JSONDecodeError, zstandard.ZstdError, struct.error) as e:
        print(f"REFUSED: {e}", file=sys.stderr)
        return 1
    print(f"OK: version {manifest['version']}, {tenants} tenants, {routes} routes, {len(records)} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
