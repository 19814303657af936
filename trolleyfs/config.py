"""The one configuration model and how it is loaded.

Every option is a field of :class:`Config`, documented where it is defined; that definition is the
only source of defaults. Values come from, highest precedence first: ``-o key=value`` options on the
command line, a TOML file (``config=FILE``), environment variables ``TROLLEYFS_<KEY>``.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from trolleyfs.errors import ConfigError
from trolleyfs.fs.names import DEFAULT_INSTANCE_NAME, DEFAULT_SERIES_NAME, DEFAULT_STUDY_NAME, NameTemplate

ENV_PREFIX = "TROLLEYFS_"
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: Any) -> int:
    """``2G``, ``500M``, ``1.5G``, ``4096`` (bytes) -> bytes. Units are powers of 1024."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size: {value!r} (use e.g. 2G, 500M, 4096)")
    try:
        return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
    except OverflowError:
        raise ValueError(f"size too large: {value!r}") from None


Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]


def _user_or_group_id(value: Any, lookup: Any) -> Any:
    """`4321` or `radiology` -> a number (names are looked up in the system's user/group database)."""
    if not isinstance(value, str) or value.isdigit():
        return value
    try:
        entry = lookup(value)
    except KeyError:
        raise ValueError(f"no such user or group: {value!r}") from None
    return entry[2]


def _default_cache_root() -> Path:
    if os.geteuid() == 0:
        return Path("/var/cache/trolleyfs")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trolleyfs"


def _modality_list(value: Any) -> Any:
    """`US,SC` -> ("US", "SC")."""
    if isinstance(value, str):
        return tuple(part.strip().upper() for part in value.split(",") if part.strip())
    return value


class Config(BaseModel):
    """Everything a mount can be told. Field docs are the user documentation (docs/options.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    source: str
    """The PACS: a DICOMweb root `http(s)://host:port/path` (QIDO-RS and WADO-RS under it), a
    DIMSE node `dicom://CALLED_AET@host:port` (C-FIND, C-GET, C-MOVE), or, with `searcher=mint`,
    a MINT root."""
    searcher: Literal["qido-rs", "dicom-qr", "mint"] | None = None
    """How directories are listed; default `qido-rs` for an http(s) SOURCE, `dicom-qr` (C-FIND)
    for a dicom:// one; `mint` searches a MINT server (`mint_url`, or SOURCE)."""
    downloader: Literal["wado-rs", "wado-uri", "c-get", "c-get-dcmtk", "c-move", "rad69"] | None = None
    """How file contents are fetched; default `wado-rs` for an http(s) SOURCE, `c-get` for a
    dicom:// one; `c-get-dcmtk` is C-GET through DCMTK's `getscu` (Debian `dcmtk`), ~3× faster
    than pynetdicom's; `rad69` retrieves over IHE RAD-69 (`rad69_url`)."""
    qido_url: str = ""
    """QIDO-RS root; empty means SOURCE."""
    wado_rs_url: str = ""
    """WADO-RS root; empty means SOURCE."""
    wado_uri_url: str = ""
    """WADO-URI endpoint (e.g. `http://host:8042/wado`); needed with `downloader=wado-uri`."""
    mint_url: str = ""
    """MINT root (`GET {mint_url}/studies`) for `searcher=mint`; empty means SOURCE."""
    rad69_url: str = ""
    """RAD-69 (Retrieve Imaging Document Set) SOAP endpoint; needed with `downloader=rad69`."""
    rad69_repository_id: str = "1.3.6.1.4.1000"
    """The XDS RepositoryUniqueId our RAD-69 requests name (the repository holding the images;
    the PACS vendor tells it)."""
    rad69_batch_size: int = Field(default=1000, ge=1)
    """Most instances one RAD-69 request asks for; a larger series takes several requests."""
    qr_url: str = ""
    """DIMSE node `dicom://CALLED_AET@host:port` for dicom-qr, c-get and c-move; empty means SOURCE."""
    calling_aet: str = Field(default="TROLLEYFS", min_length=1, max_length=16)
    """Our AE title in DIMSE associations."""
    move_aet: str = Field(default="", max_length=16)
    """AE title the PACS sends C-MOVE results to (it must know it, with move_host:move_port);
    empty means calling_aet."""
    move_host: str = "127.0.0.1"
    """Address our storage SCP listens on for C-MOVE results, for the life of the mount."""
    move_port: int = Field(default=11112, ge=1, le=65535)
    """Port of that storage SCP."""
    max_associations: int = Field(default=4, ge=1)
    """DIMSE associations open at once (each runs in its own thread); background work
    (read-ahead) never takes the last quarter (at least one), which stay free for readers."""
    dimse_idle_time: float = Field(default=3.0, ge=0)
    """Seconds a C-FIND association is kept open for the next search after its last one; then it
    is released (A-RELEASE). Keep it below the PACS's own idle timeout (Orthanc: 5 s)."""
    acse_timeout: float | None = Field(default=None, gt=0)
    """Seconds to wait for association set-up and release; empty means `timeout`."""
    dimse_timeout: float | None = Field(default=None, gt=0)
    """Seconds to wait for the next DIMSE message; empty means `timeout`."""
    network_timeout: float | None = Field(default=None, gt=0)
    """Seconds a DIMSE connection may stay silent; empty means `timeout`."""
    username: str = ""
    """HTTP basic-auth user for every DICOMweb request; empty means no authentication."""
    password: str = Field(default="", repr=False)
    """HTTP basic-auth password. A secret: only from `credentials_file` or `TROLLEYFS_PASSWORD`,
    never from the command line or the config file."""
    token: str = Field(default="", repr=False)
    """HTTP bearer token, instead of basic auth. A secret, like `password`."""
    token_command: str = ""
    """A command that prints a bearer token (e.g. `gcloud auth print-access-token`), run without a
    shell; it is run again when a server answers 401, and before the token expires when it prints
    JSON with `access_token` and `expires_in` (seconds). Instead of `token`."""
    oauth2_token_url: str = ""
    """OAuth2 token endpoint (e.g. Keycloak's `.../protocol/openid-connect/token`): bearer tokens
    are obtained with the client credentials grant, `client_id` and `client_secret` from
    `credentials_file`, and renewed before they expire and on a 401."""
    oauth2_scope: str = ""
    """Scope asked for with `oauth2_token_url`; empty asks for none."""
    client_id: str = ""
    """OAuth2 client id for `oauth2_token_url`."""
    client_secret: str = Field(default="", repr=False)
    """OAuth2 client secret for `oauth2_token_url`. A secret, like `password`."""
    credentials_file: Path | None = None
    """TOML file with `username` and `password`, or `token`, or `client_id` and `client_secret`; it
    must not be readable by group or others (mode 0600), or the mount is refused."""
    ca_bundle: Path | None = None
    """PEM file of the certificate authorities to trust for https:// (default: the system's)."""
    client_cert: Path | None = None
    """PEM client certificate for https:// (with its key, or see `client_key`)."""
    client_key: Path | None = None
    """PEM key of `client_cert`, if not in the same file."""
    timeout: float = Field(default=30.0, gt=0)
    """Seconds the PACS may take to accept a connection or between two pieces of an answer; past it
    the attempt fails (and, after the retries, the file operation gets EIO). A search gives up
    after (retries + 1) × 2 × timeout + 5 seconds in all."""
    min_transfer_rate: Size = 1024
    """Bytes per second an HTTP answer must at least arrive at, measured over `timeout` seconds:
    a PACS trickling slower is abandoned (EIO), so that no read can be held forever; 0 turns
    the check off. (DIMSE transfers are bounded by `dimse_timeout` and `network_timeout`.)"""
    start_timeout: float = Field(default=60.0, gt=0)
    """Seconds `trolleyfs mount` (without `-f`), mount(8) and fstab wait for the daemon to report
    the mount ready; past it the daemon is stopped and the mount fails (exit status 1). The
    start-up question to the PACS gets at most half of it: a PACS that does not answer in time
    does not stop the mount, one that refuses us does."""
    retries: int = Field(default=2, ge=0)
    """Extra attempts after a connect error, a 429 or a 5xx answer, with exponential backoff."""
    max_connections: int = Field(default=8, ge=1)
    """Connections kept open to each server, for searches and, separately, for instance
    downloads; background downloads (read-ahead) never take the last quarter (at least one) of
    the latter, which stay free for files a reader opens."""
    cache_dir: Path | None = None
    """Directory of the instance cache; default `/var/cache/trolleyfs/<source hash>` as root,
    else `$XDG_CACHE_HOME/trolleyfs/<source hash>`. Created with mode 0700."""
    cache_mode: Literal["private", "shared"] = "private"
    """`private`: the cache directory belongs to this daemon alone. `shared`: daemons on many hosts
    use one `cache_dir` at once (on NFSv4 without `nolock`, CephFS, Lustre, GlusterFS), each
    instance fetched from the PACS once for all of them; see docs/cluster.md."""
    cache_namespace: str = ""
    """With `cache_mode=shared`: the name under which this source's entries are kept in the shared
    directory; empty means a hash of `source` (set it when hosts reach one PACS by two names)."""
    cache_size: Size = 2 * 1024**3
    """Upper bound of the bytes the instance cache holds, e.g. `2G` (with `cache_mode=shared`, the
    shared directory as a whole)."""
    min_free_space: Size = 1024**3
    """Free space the cache leaves on its filesystem; it evicts to keep it."""
    listing_ttl: float = Field(default=60.0, ge=0)
    """Seconds a directory listing (a searcher answer) is reused before the PACS is asked again."""
    root_listing_limit: int = Field(default=1000, ge=0)
    """Studies asked for to list `/patients` (their patients are listed); 0 lists no one. A patient
    directory can always be opened by its PatientID, listed or not."""
    query_limit: int = Field(default=1000, ge=1)
    """Studies a `/query/<query>` folder lists when its name has no `limit=N`."""
    dates_from: int = Field(default=1990, ge=1, le=9999)
    """First year `/dates` lists (up to this year); other years can still be opened by name."""
    study_name: str = DEFAULT_STUDY_NAME
    """Naming template of study folders: `{Keyword}` fields of the study's attributes, with the
    format spec of Python's `str.format` for numbers (e.g. `{StudyDate}_{AccessionNumber}`).
    Values are reduced to safe characters, missing ones left out, clashes get `~2`."""
    series_name: str = DEFAULT_SERIES_NAME
    """Naming template of series folders, e.g. `{SeriesNumber:03}_{SeriesDescription}`."""
    instance_name: str = DEFAULT_INSTANCE_NAME
    """Naming template of instance files (`.dcm` is added); `<SOPInstanceUID>.dcm` also opens an
    instance in its series folder, whatever the template."""
    readahead_max: Size = 512 * 1024**2
    """Opening a file that is not cached yet also starts a background download of the rest of its
    series, when the series is estimated at no more than this many bytes; 0 turns read-ahead off."""
    read_ahead_kb: int = Field(default=1024, ge=0)
    """Kernel read-ahead window of the mount in KiB (FUSE's own default is 128): larger means
    fewer, larger read requests for files not yet in the page cache. Set through
    `/sys/class/bdi`, which needs root; 0 leaves the kernel's default."""
    listing_readahead: int = Field(default=16, ge=0)
    """Opening one series of a study also lists the study's other series in the background (four
    searches at a time) when it has no more than this many, so that `ls -lR` or a file manager
    counting their entries does not wait one search after another; 0 turns it off."""
    preview_size: int = Field(default=256, ge=16, le=4096)
    """Pixels of the longer side of a series' `preview.png` (its aspect kept), and of each side of
    a study's square `preview.png` montage."""
    nifti_timeout: float = Field(default=600.0, gt=0)
    """Seconds dcm2niix may take to convert one series for `/nifti` (after its download); past it
    the conversion is abandoned and the open gets EIO."""
    deid_secret: str = Field(default="", repr=False)
    """The key of `/deid`'s pseudonyms, remapped UIDs and date shifts (an HMAC key: the same key
    gives the same pseudonyms on every mount). A secret: only from `credentials_file` (or
    `TROLLEYFS_DEID_SECRET`); without one there is no `/deid`. At least 16 characters."""
    deid_shift_dates: bool = False
    """`/deid` keeps the time between a patient's studies (PS3.15 "Retain Longitudinal Temporal
    Information with Modified Dates"): every date of a patient is moved by the same secret number
    of days, instead of being removed or emptied."""
    deid_retain_device_identity: bool = False
    """`/deid` keeps the identity of the scanner (PS3.15 "Retain Device Identity": station name,
    device serial number, ...); off, they are removed."""
    deid_retain_patient_characteristics: bool = False
    """`/deid` keeps the patient's sex, age, size and weight (PS3.15 "Retain Patient
    Characteristics"); off, they are removed or emptied."""
    deid_burned_in_checked: Annotated[tuple[str, ...], BeforeValidator(_modality_list)] = ()
    """Modalities (comma-separated, e.g. `US,SC`) whose images were checked to hold no burned-in
    text: `/deid` serves them. By default US, secondary captures (SC, OT) and other modalities
    known for text in the pixels (XC, ES, GM, SM, DOC) are refused with EACCES, as is every
    instance flagged `BurnedInAnnotation=YES` whatever this says."""
    allow_other: bool = False
    """Let users other than the one who mounted read the filesystem (FUSE `allow_other`; a
    non-root user also needs `user_allow_other` in /etc/fuse.conf). The kernel then checks `uid`,
    `gid` and `umask` like on any filesystem."""
    uid: Annotated[int | None, BeforeValidator(lambda value: _user_or_group_id(value, pwd.getpwnam))] = Field(
        default=None, ge=0
    )
    """Owner of every file and directory, a user name or number; default the user who mounted."""
    gid: Annotated[int | None, BeforeValidator(lambda value: _user_or_group_id(value, grp.getgrnam))] = Field(
        default=None, ge=0
    )
    """Group of every file and directory, a group name or number; default the mounting user's group."""
    umask: Annotated[int, BeforeValidator(lambda value: int(value, 8) if isinstance(value, str) else value)] = Field(
        default=0o022, ge=0, le=0o777
    )
    """Permission bits taken away from r-x (directories) and r-- (files), in octal: `027` keeps
    others out, `077` leaves the owner alone."""
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(lambda value: str(value).upper())
    ] = "INFO"
    """Daemon log verbosity."""

    @field_validator("deid_secret")
    @classmethod
    def _long_enough(cls, secret: str) -> str:
        if secret and len(secret) < 16:
            raise ValueError("deid_secret must be at least 16 characters (it keys every pseudonym)")
        return secret

    @field_validator("study_name", "series_name", "instance_name")
    @classmethod
    def _template(cls, template: str) -> str:
        NameTemplate(template)
        return template

    @model_validator(mode="after")
    def _urls(self) -> Config:
        for name in URL_OPTIONS:
            refuse_credentials_in_url(name, getattr(self, name))
        if _scheme(self.source) not in ("http", "https", "dicom"):
            raise ValueError(f"source must be an http(s):// or dicom:// URL, not {self.source!r}")
        ways = [name for name in ("username", "token", "token_command", "oauth2_token_url") if getattr(self, name)]
        if len(ways) > 1:
            raise ValueError(f"authenticate one way only, not with {' and '.join(ways)}")
        if self.oauth2_token_url and not (self.client_id and self.client_secret):
            raise ValueError("oauth2_token_url needs client_id and client_secret (in credentials_file)")
        if self.token_command and not self.token_command.strip():
            raise ValueError("token_command is empty")
        for name in ("qido_url", "wado_rs_url", "wado_uri_url", "mint_url", "rad69_url", "oauth2_token_url"):
            value = getattr(self, name)
            if value and _scheme(value) not in ("http", "https"):
                raise ValueError(f"{name} must be an http:// or https:// URL, not {value!r}")
        for name in ("source", "qr_url"):
            if _scheme(getattr(self, name)) == "dicom":
                parse_dimse_url(getattr(self, name))
        if self.qr_url and _scheme(self.qr_url) != "dicom":
            raise ValueError(f"qr_url must be a dicom://AET@host:port URL, not {self.qr_url!r}")
        needs = {
            "qido-rs": (self.qido_url or self.dicomweb_source, "qido_url=URL"),
            "wado-rs": (self.wado_rs_url or self.dicomweb_source, "wado_rs_url=URL"),
            "wado-uri": (self.wado_uri_url, "wado_uri_url=URL (e.g. http://host:8042/wado)"),
            "mint": (self.mint_url or self.dicomweb_source, "mint_url=URL"),
            "rad69": (self.rad69_url, "rad69_url=URL (the RAD-69 SOAP endpoint)"),
            "dicom-qr": (self.qr_url or self.dimse_source, "qr_url=dicom://AET@host:port"),
            "c-get": (self.qr_url or self.dimse_source, "qr_url=dicom://AET@host:port"),
            "c-get-dcmtk": (self.qr_url or self.dimse_source, "qr_url=dicom://AET@host:port"),
            "c-move": (self.qr_url or self.dimse_source, "qr_url=dicom://AET@host:port"),
        }
        for role, backend in (("searcher", self.resolved_searcher), ("downloader", self.resolved_downloader)):
            url, option = needs[backend]
            if not url:
                raise ValueError(f"{role}={backend} with this SOURCE needs {option}")
        return self

    @property
    def dicomweb_source(self) -> str:
        return self.source if _scheme(self.source) in ("http", "https") else ""

    @property
    def dimse_source(self) -> str:
        return self.source if _scheme(self.source) == "dicom" else ""

    @property
    def resolved_searcher(self) -> str:
        return self.searcher or ("dicom-qr" if self.dimse_source else "qido-rs")

    @property
    def resolved_downloader(self) -> str:
        return self.downloader or ("c-get" if self.dimse_source else "wado-rs")

    @property
    def resolved_qido_url(self) -> str:
        return self.qido_url or self.dicomweb_source

    @property
    def resolved_mint_url(self) -> str:
        return self.mint_url or self.dicomweb_source

    @property
    def resolved_wado_rs_url(self) -> str:
        return self.wado_rs_url or self.dicomweb_source

    @property
    def dimse_node(self) -> DimseNode:
        return parse_dimse_url(self.qr_url or self.dimse_source)

    @property
    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        digest = hashlib.sha256(self.source.encode()).hexdigest()[:16]
        return _default_cache_root() / digest


class DimseNode(NamedTuple):
    """A DICOM network peer."""

    ae_title: str
    host: str
    port: int


def parse_dimse_url(url: str) -> DimseNode:
    """`dicom://ORTHANC@127.0.0.1:4242` -> DimseNode("ORTHANC", "127.0.0.1", 4242)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "dicom" or not parts.username or not parts.hostname or port is None:
        raise ValueError(f"a DIMSE node is dicom://CALLED_AET@host:port, not {url!r}")
    if len(parts.username) > 16:
        raise ValueError(f"AE title {parts.username!r} in {url!r} is longer than 16 characters (dicom://AET@host:port)")
    return DimseNode(parts.username, parts.hostname, port)


URL_OPTIONS = ("source", "qido_url", "wado_rs_url", "wado_uri_url", "mint_url", "rad69_url", "qr_url", "oauth2_token_url")


def refuse_credentials_in_url(name: str, url: str) -> None:
    """A URL with a password (or, over http(s), any user) is refused: it would show in
    /proc/mounts, the log and the process list, and would be sent to every host the client is
    redirected to. The message does not repeat the URL."""
    parts = urlsplit(url)
    has_password = parts.password is not None
    if has_password or (parts.username is not None and parts.scheme in ("http", "https")):
        raise ValueError(
            f"{name} may not hold credentials (user:password@): they would be visible in /proc/mounts, "
            "logs and the process list; put them in credentials_file=FILE (mode 0600) instead"
        )


def _scheme(url: str) -> str:
    return urlsplit(url).scheme if url else ""


_Escaped = list[tuple[str, bool]]
"""Characters of an option, each with whether a backslash escaped it."""


def parse_mount_options(text: str) -> dict[str, str]:
    """``a=1,b=2`` -> {'a': '1', 'b': '2'}; a bare ``flag`` means ``flag=true``. As in libfuse's
    option parser, a backslash makes the next character plain: ``\\,`` is a comma inside a
    value, ``\\\\`` a backslash. Spaces around an option and its key are dropped unless escaped."""
    options: dict[str, str] = {}
    for item in _split_options(text):
        item = _strip(item)
        if not item:
            continue
        cut = next((index for index, (char, escaped) in enumerate(item) if char == "=" and not escaped), None)
        key = _strip(item if cut is None else item[:cut])
        options["".join(char for char, _ in key)] = "true" if cut is None else "".join(char for char, _ in item[cut + 1 :])
    return options


def _split_options(text: str) -> list[_Escaped]:
    items: list[_Escaped] = [[]]
    chars = iter(text)
    for char in chars:
        if char == "\\":
            following = next(chars, None)
            items[-1].append(("\\", False) if following is None else (following, True))
        elif char == ",":
            items.append([])
        else:
            items[-1].append((char, False))
    return items


def _strip(item: _Escaped) -> _Escaped:
    start, end = 0, len(item)
    while start < end and item[start][0].isspace() and not item[start][1]:
        start += 1
    while end > start and item[end - 1][0].isspace() and not item[end - 1][1]:
        end -= 1
    return item[start:end]


def join_mount_options(options: Mapping[str, object]) -> str:
    """The inverse of :func:`parse_mount_options`."""
    return ",".join(f"{_escape(str(key))}={_escape(str(value))}" for key, value in options.items())


def _escape(text: str) -> str:
    """A backslash before every ``\\``, ``,`` and ``=``, and before leading or trailing spaces."""
    chars = ["\\" + char if char in "\\,=" else char for char in text]
    lead = len(text) - len(text.lstrip())
    trail = len(text) - len(text.rstrip()) if text.strip() else 0
    for index in [*range(lead), *range(len(text) - trail, len(text))]:
        chars[index] = "\\" + text[index]
    return "".join(chars)


def options_from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    known = Config.model_fields
    return {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() in known
    }


SECRET_OPTIONS = frozenset({"password", "token", "client_secret", "deid_secret"})
CREDENTIAL_KEYS = ("username", "password", "token", "client_id", "client_secret", "deid_secret")


def read_credentials(path: Path) -> dict[str, str]:
    """The credentials (CREDENTIAL_KEYS) in a TOML file that only its owner can read."""
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ConfigError(
                f"credentials file {path} is readable by others (mode {mode & 0o777:03o}); chmod 600 it"
            )
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, not TOML, an integer past 4300 digits
        raise ConfigError(f"cannot read credentials file {path}: {exc}") from exc
    unknown = sorted(set(values) - set(CREDENTIAL_KEYS))
    if unknown:
        raise ConfigError(f"credentials file {path} may hold {', '.join(CREDENTIAL_KEYS)} only, not {', '.join(unknown)}")
    return {key: str(value) for key, value in values.items()}


def load_config(
    cli_options: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Config:
    """Merge environment < TOML file < command line and validate; errors become ConfigError."""
    environ = os.environ if environ is None else environ
    cli = dict(cli_options)
    env = options_from_environment(environ)
    config_file = cli.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    from_file: dict[str, Any] = {}
    if config_file:
        try:
            from_file = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8, not TOML, an integer past 4300 digits
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
    for source_name, values in (("the command line", cli), (f"config file {config_file}", from_file)):
        if leaked := sorted(SECRET_OPTIONS & values.keys()):
            raise ConfigError(
                f"{', '.join(leaked)} may not be given on {source_name} (it would be visible to others); "
                "use credentials_file=FILE (mode 0600) or the environment (TROLLEYFS_PASSWORD, TROLLEYFS_TOKEN, "
                "TROLLEYFS_CLIENT_SECRET, TROLLEYFS_DEID_SECRET)"
            )
    credentials_file = cli.get("credentials_file") or from_file.get("credentials_file") or env.get("credentials_file")
    if credentials_file and not isinstance(credentials_file, (str, Path)):
        raise ConfigError("credentials_file must be a file name")
    secrets = read_credentials(Path(credentials_file)) if credentials_file else {}
    merged = {**env, **secrets, **from_file, **cli}
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            ": ".join(filter(None, (".".join(map(str, err["loc"])), err["msg"].removeprefix("Value error, "))))
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc


def options_reference() -> str:
    """docs/options.md, generated from the field docs above (a test keeps the file in step)."""
    lines = [
        "# Options",
        "",
        "Generated by `python -m trolleyfs.config` from `trolleyfs/config.py`; do not edit by hand.",
        "",
        "Give them as `-o key=value,key=value` on the command line, as `key = value` lines in a TOML",
        "file named by `-o config=FILE` (or `TROLLEYFS_CONFIG`), or as environment variables",
        "`TROLLEYFS_KEY=value`; that is also the order of precedence. Sizes take K, M, G, T",
        "(powers of 1024).",
        "",
        "| option | default | meaning |",
        "|---|---|---|",
    ]
    for name, field in Config.model_fields.items():
        default = "(required: SOURCE)" if field.is_required() else f"`{field.default!r}`"
        if name in ("cache_size", "min_free_space", "readahead_max"):
            default = f"`{field.default}` bytes"
        description = " ".join((field.description or "").split())
        lines.append(f"| `{name}` | {default} | {description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(options_reference(), end="")
