"""Images of inference requests: base64 `data:` URLs, or http(s) URLs fetched under SSRF guards.

Every image is checked here, in the API, before a worker sees it: declared and actual type
(PNG, JPEG or WebP), byte size, pixel count from the header (a decompression bomb is refused before
it is expanded), and a full decode. The worker receives the original bytes.

URL fetching (off unless `MBPO_INFERENCE_ALLOW_IMAGE_URLS`): the host is resolved here and every
address it resolves to must be public (no loopback, private, link-local, metadata, multicast,
reserved or unspecified address, IPv4-mapped IPv6 included); the connection then goes to that
checked address (the Host header and TLS server name keep the original name), so a second DNS
answer cannot swap in an internal address. Redirects are followed by hand, each hop checked the
same way; the body is capped at the image byte limit and the whole fetch at a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import ipaddress
import re
import socket
import warnings
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
from PIL import Image, UnidentifiedImageError

from api.errors import BadRequest
from infra.settings import Settings

ALLOWED_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}
MAX_REDIRECTS = 3
_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.S)


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    format: str  # PNG, JPEG, WEBP
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def b64(self) -> str:
        return base64.b64encode(self.data).decode()


def _bad(message: str, code: str, field: str) -> BadRequest:
    return BadRequest(message, code=code, field=field)


def check_image_bytes(data: bytes, settings: Settings, field: str) -> CheckedImage:
    if len(data) > settings.max_image_bytes:
        raise _bad(f"image is {len(data)} bytes, limit {settings.max_image_bytes}", "image_too_large", field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                width, height = img.size
                if fmt not in ALLOWED_TYPES.values():
                    raise _bad(
                        f"unsupported image type {fmt or 'unknown'}; use PNG, JPEG or WebP",
                        "unsupported_image_type",
                        field,
                    )
                pixels, limit = width * height, settings.max_image_pixels
                if pixels > limit:
                    raise _bad(
                        f"image is {width}x{height} = {pixels} pixels, limit {limit}",
                        "image_too_large",
                        field,
                    )
                img.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise _bad("the image could not be decoded", "invalid_image", field) from exc
    return CheckedImage(data, fmt, width, height)


def decode_data_url(url: str, settings: Settings, field: str) -> CheckedImage:
    match = _DATA_URL.match(url)
    if match is None:
        raise _bad("image data URLs look like data:image/png;base64,<data>", "invalid_image_url", field)
    mime = match["mime"].strip().lower()
    if mime not in ALLOWED_TYPES:
        raise _bad(
            f"unsupported image type {mime or 'unknown'}; use image/png, image/jpeg or image/webp",
            "unsupported_image_type",
            field,
        )
    encoded = match["data"].strip()
    if len(encoded) * 3 // 4 > settings.max_image_bytes + 3:  # refuse before decoding
        raise _bad(f"image is larger than {settings.max_image_bytes} bytes", "image_too_large", field)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad("the image is not valid base64", "invalid_base64", field) from exc
    image = check_image_bytes(data, settings, field)
    if ALLOWED_TYPES[mime] != image.format:
        raise _bad(f"the data URL says {mime} but the image is {image.format}", "image_type_mismatch", field)
    return image


async def load_image_url(url: str, settings: Settings, field: str) -> CheckedImage:
    """A data URL, or (when enabled) an http(s) URL fetched under the SSRF guards."""
    if url.startswith("data:"):
        return decode_data_url(url, settings, field)
    scheme = urlsplit(url).scheme.lower()
    if scheme not in {"http", "https"}:
        raise _bad("image_url must be a data: URL or an http(s) URL", "invalid_image_url", field)
    if not settings.inference_allow_image_urls:
        raise _bad(
            "image URLs are disabled on this server; send the image as a base64 data URL",
            "image_urls_disabled",
            field,
        )
    try:
        async with asyncio.timeout(settings.inference_url_timeout_seconds):
            data = await _fetch(url, settings, field)
    except TimeoutError as exc:
        raise _bad("fetching the image URL took too long", "image_fetch_timeout", field) from exc
    return check_image_bytes(data, settings, field)


def _address_refused(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified


async def _checked_address(host: str, port: int, settings: Settings, field: str) -> str:
    """One address of `host` to connect to, after checking every address it resolves to."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise _bad(f"cannot resolve {host}", "image_fetch_failed", field) from exc
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise _bad(f"cannot resolve {host}", "image_fetch_failed", field)
    allowed = f"{host.lower()}:{port}" in settings.inference_url_allowlist
    if not allowed and any(_address_refused(a) for a in addresses):
        raise _bad(
            "image URLs may not point at loopback, private, link-local or metadata addresses",
            "image_url_forbidden",
            field,
        )
    return addresses[0]


async def _fetch(url: str, settings: Settings, field: str) -> bytes:
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise _bad("image URLs must be http(s) with a host", "invalid_image_url", field)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            address = await _checked_address(parts.hostname, port, settings, field)
            netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
            host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
            request = client.build_request(
                "GET",
                pinned,
                headers={"Host": host_header, "Accept": "image/png, image/jpeg, image/webp"},
                extensions={"sni_hostname": parts.hostname},
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise _bad("could not fetch the image URL", "image_fetch_failed", field) from exc
            try:
                if not response.is_redirect:
                    return await _read_image_body(response, settings.max_image_bytes, field)
                location = response.headers.get("location")
            finally:
                await response.aclose()
            if not location:
                raise _bad("redirect without a location", "image_fetch_failed", field)
            url = urljoin(url, location)
    raise _bad(f"more than {MAX_REDIRECTS} redirects", "image_fetch_failed", field)


async def _read_image_body(response: httpx.Response, limit: int, field: str) -> bytes:
    if response.status_code != 200:
        raise _bad(f"image URL answered HTTP {response.status_code}", "image_fetch_failed", field)
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _bad(f"image is larger than {limit} bytes", "image_too_large", field)
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise _bad(f"image is larger than {limit} bytes", "image_too_large", field)
    return bytes(body)
