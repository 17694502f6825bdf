"""Talking to Kaggle through the official client (``kaggle`` 2.x): credentials, submissions, status, downloads,
kernel pushes.

Every import of ``kaggle`` in medkit is in this module, inside a function: importing the package authenticates
at once and exits the process when it finds no credentials. So medkit first looks for credentials in the places
the client reads them (`find_credentials`) and fails with a clear error naming them, and only then imports the
client, with its stdout captured (the client prints; medkit's stdout carries results). The client's errors
(HTTP status, ``SystemExit``, failed uploads) become `SubmitError` s with a hint. A key or token is never
printed: every message that leaves this module is scrubbed of them.

A submission counts only when Kaggle returns a non-zero submission ref.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medkit.console import debug, info
from medkit.errors import MedkitError, OfflineError, did_you_mean

__all__ = [
    "SubmitError",
    "CredentialsError",
    "Credentials",
    "SubmissionInfo",
    "SubmitResult",
    "KernelPush",
    "find_credentials",
    "kaggle_config_dir",
    "submit_file",
    "list_submissions",
    "download_files",
    "push_kernel_bundle",
]

_SETTINGS_URL = "https://www.kaggle.com/settings/api"


class SubmitError(MedkitError):
    """Kaggle refused or failed a request (credentials, unknown competition, failed upload, no submission ref)."""


class CredentialsError(SubmitError):
    """No usable Kaggle credentials."""


@dataclass(frozen=True)
class Credentials:
    """Where the Kaggle credentials come from (the secrets themselves are kept only to scrub messages).

    Attributes:
        method: How the client will authenticate, for messages (``kaggle.json (~/.kaggle/kaggle.json)``, ...).
        username: The Kaggle user, when the credentials name one.
        config_dir: The client's configuration folder.
        secrets: Key, token and the Basic-auth form of the key; never printed.
    """

    method: str
    username: str | None
    config_dir: Path
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def scrub(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in self.secrets:
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text


@dataclass(frozen=True)
class SubmissionInfo:
    """One submission as Kaggle lists it.

    Attributes:
        ref: Submission ref.
        status: ``PENDING``, ``COMPLETE`` or ``ERROR``.
        public_score: Public leaderboard score (None until scored).
        private_score: Private leaderboard score (None until published).
        description: The submission message.
        date: When it was submitted.
        file_name: The uploaded file.
        error: Kaggle's error description, for ``ERROR``.
    """

    ref: int
    status: str
    public_score: str | None = None
    private_score: str | None = None
    description: str = ""
    date: str = ""
    file_name: str = ""
    error: str = ""


@dataclass(frozen=True)
class SubmitResult:
    """A submission Kaggle registered.

    Attributes:
        ref: The non-zero submission ref.
        message: Kaggle's message.
        info: Its status and score after polling (None when not polled or not listed yet).
    """

    ref: int
    message: str
    info: SubmissionInfo | None = None


@dataclass(frozen=True)
class KernelPush:
    """A kernel bundle pushed to Kaggle.

    Attributes:
        dataset: ``owner/slug`` of the weights dataset.
        dataset_url: Its page.
        kernel: ``owner/slug`` of the notebook.
        kernel_url: Its page.
        version: The notebook version Kaggle started.
    """

    dataset: str
    dataset_url: str
    kernel: str
    kernel_url: str
    version: int | None


# ---------------------------------------------------------------------------------------------- credentials
def kaggle_config_dir(environ: dict[str, str] | None = None) -> Path:
    """The folder the client reads ``kaggle.json`` from: ``KAGGLE_CONFIG_DIR``, else ``~/.kaggle`` when it exists,
    else (Linux) ``$XDG_CONFIG_HOME/kaggle`` or ``~/.config/kaggle``."""
    env = os.environ if environ is None else environ
    if env.get("KAGGLE_CONFIG_DIR"):
        return Path(env["KAGGLE_CONFIG_DIR"]).expanduser()
    home = Path(os.path.expanduser("~")) / ".kaggle"
    if home.exists() or not sys.platform.startswith("linux"):
        return home
    xdg = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(xdg) / "kaggle"


def _token_file(path: str | os.PathLike[str]) -> str | None:
    p = Path(path).expanduser()
    if not p.is_file():
        return None
    try:
        return p.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _access_token(env: dict[str, str]) -> tuple[str, str] | None:
    """``(token, where)`` as kagglesdk looks for it: the notebook's token file, ``KAGGLE_API_TOKEN`` (the token or a
    file holding it), ``~/.kaggle/access_token`` (or ``.txt``)."""
    if env.get("KAGGLE_KERNEL_RUN_TYPE") and env.get("KAGGLE_DATA_PROXY_URL") and env.get("KAGGLE_API_V1_TOKEN"):
        token = _token_file(env["KAGGLE_API_V1_TOKEN"])
        if token:
            return token, "the notebook's KAGGLE_API_V1_TOKEN file"
    value = env.get("KAGGLE_API_TOKEN")
    if value:
        if Path(value).expanduser().exists():
            token = _token_file(value)
            return (token, "the file named by KAGGLE_API_TOKEN") if token else None
        return value, "KAGGLE_API_TOKEN"
    for name in ("access_token", "access_token.txt"):
        token = _token_file(Path(os.path.expanduser("~")) / ".kaggle" / name)
        if token:
            return token, f"~/.kaggle/{name}"
    return None


def _legacy_key(env: dict[str, str], config_dir: Path) -> tuple[str, str, str] | None:
    """``(username, key, where)`` from kaggle.json, overridden by ``KAGGLE_USERNAME`` / ``KAGGLE_KEY``."""
    path = config_dir / "kaggle.json"
    values: dict[str, Any] = {}
    if path.is_file():
        try:
            values = json.loads(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise CredentialsError(
                f"{path}: not a valid kaggle.json",
                hint=f'it holds {{"username": ..., "key": ...}}; see {_SETTINGS_URL}',
            ) from None
        if not isinstance(values, dict):
            values = {}
    user = env.get("KAGGLE_USERNAME") or values.get("username")
    key = env.get("KAGGLE_KEY") or values.get("key")
    if not user or not key:
        return None
    where = "KAGGLE_USERNAME/KAGGLE_KEY" if env.get("KAGGLE_KEY") else f"kaggle.json ({path})"
    return str(user), str(key), where


def find_credentials(environ: dict[str, str] | None = None) -> Credentials:
    """Find Kaggle credentials where the client looks, in its order, without importing it.

    Order: an access token (``KAGGLE_API_TOKEN``, ``~/.kaggle/access_token``), then a legacy API key
    (``kaggle.json`` in `kaggle_config_dir`, ``KAGGLE_USERNAME`` / ``KAGGLE_KEY`` taking precedence), then the
    OAuth credentials of ``kaggle auth login`` (``~/.kaggle/credentials.json``).

    Raises:
        CredentialsError: None found (naming the places), or an unreadable kaggle.json.
    """
    env = dict(os.environ if environ is None else environ)
    config_dir = kaggle_config_dir(env)
    token = _access_token(env)
    if token is not None:
        return Credentials(f"access token ({token[1]})", env.get("KAGGLE_USERNAME"), config_dir, (token[0],))
    legacy = _legacy_key(env, config_dir)
    if legacy is not None:
        user, key, where = legacy
        basic = base64.b64encode(f"{user}:{key}".encode()).decode()
        return Credentials(where, user, config_dir, (key, basic))
    oauth = Path(os.path.expanduser("~")) / ".kaggle" / "credentials.json"
    if oauth.is_file():
        try:
            refresh = str(json.loads(oauth.read_text(encoding="utf-8")).get("refresh_token") or "")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            refresh = ""
        if refresh:
            return Credentials("OAuth (~/.kaggle/credentials.json)", None, config_dir, (refresh,))
    raise CredentialsError(
        "no Kaggle credentials found",
        hint=f"create an API token at {_SETTINGS_URL} and save kaggle.json in {config_dir} (chmod 600), or set "
        "KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN",
    )


# ---------------------------------------------------------------------------------------------- the client
@contextlib.contextmanager
def _client_errors(creds: Credentials, slug: str, action: str) -> Iterator[None]:
    """Run client code with its stdout captured (shown on stderr, scrubbed) and its failures as `SubmitError`."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    except MedkitError:
        raise
    except SystemExit:
        raise CredentialsError(
            f"the kaggle client refused the credentials from {creds.method}", hint=f"check them; see {_SETTINGS_URL}"
        ) from None
    except Exception as exc:  # the client raises requests, ValueError and bare Exceptions alike
        raise _translate(exc, creds, slug, action) from None
    finally:
        for line in buffer.getvalue().splitlines():
            if line.strip():
                debug(f"kaggle: {creds.scrub(line.strip())}")


def _translate(exc: Exception, creds: Credentials, slug: str, action: str) -> MedkitError:
    import requests

    text = creds.scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status == 401:
        return SubmitError(
            f"Kaggle rejected the credentials from {creds.method} (401 Unauthorized)",
            hint=f"check the username and key, or create a new API token at {_SETTINGS_URL}",
        )
    if status == 403:
        return SubmitError(
            f"Kaggle refused to {action} for '{slug}' (403 Forbidden)",
            hint=f"accept the rules at https://www.kaggle.com/competitions/{slug}/rules, and check the credentials",
        )
    if status == 404 or "could not find competition" in text.lower():
        from medkit.registries import COMPETITIONS

        return SubmitError(
            f"competition '{slug}' not found on Kaggle (404 when asked to {action})"
            f"{did_you_mean(slug, COMPETITIONS.names())}",
            hint="use the slug in the competition's URL; `medkit list competitions` shows the presets",
        )
    if status is not None:
        return SubmitError(f"Kaggle answered {status} when asked to {action} for '{slug}': {text}")
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return OfflineError(f"cannot reach Kaggle to {action} ({text})", hint="check the network connection and proxy")
    return SubmitError(f"could not {action} for '{slug}': {type(exc).__name__}: {text}")


def _api(creds: Credentials) -> Any:
    """An authenticated ``KaggleApi`` configured from the environment as it is now.

    The client decides its endpoint and configuration folder when its module is first imported; medkit sets
    them on the instance so that later changes (``KAGGLE_API_ENVIRONMENT``, ``KAGGLE_CONFIG_DIR``) are honoured
    and no ``--verbose`` flag (which prints request headers, the key among them) is ever passed.
    """
    with _client_errors(creds, "", "authenticate"):
        try:
            from kaggle.api.kaggle_api_extended import KaggleApi
        except ImportError as exc:
            raise SubmitError(
                f"the kaggle client cannot be imported ({exc})", hint="pip install 'kaggle>=2.2.4,<2.3' six"
            ) from None
        api = KaggleApi()
        api.config_dir = str(creds.config_dir)
        api.config = str(creds.config_dir / "kaggle.json")
        api.args = ["--local"] if os.environ.get("KAGGLE_API_ENVIRONMENT") == "LOCALHOST" else []
        api.authenticate()
    return api


def _info(sub: Any) -> SubmissionInfo:
    status = getattr(sub, "status", None)
    return SubmissionInfo(
        ref=int(getattr(sub, "ref", 0) or 0),
        status=getattr(status, "name", str(status or "")),
        public_score=getattr(sub, "public_score", None) or None,
        private_score=getattr(sub, "private_score", None) or None,
        description=str(getattr(sub, "description", "") or ""),
        date=str(getattr(sub, "date", "") or ""),
        file_name=str(getattr(sub, "file_name", "") or ""),
        error=str(getattr(sub, "error_description", "") or ""),
    )


def _listed(api: Any, creds: Credentials, slug: str, limit: int) -> list[SubmissionInfo]:
    with _client_errors(creds, slug, "list submissions"):
        subs = api.competition_submissions(slug, page_size=limit) or []
    return [_info(s) for s in subs if s is not None][:limit]


def list_submissions(creds: Credentials, slug: str, limit: int = 10) -> list[SubmissionInfo]:
    """The most recent submissions of the user's team to a competition, newest first.

    Raises:
        SubmitError: Refused credentials, unknown competition, or another failure of the client.
    """
    return _listed(_api(creds), creds, slug, limit)


def _poll(api: Any, creds: Credentials, slug: str, ref: int, wait: float, every: float) -> SubmissionInfo | None:
    """The submission's status until it is scored, fails, or ``wait`` seconds pass; polling errors only warn."""
    from medkit.console import warn

    deadline = time.monotonic() + wait
    latest = None
    while True:
        try:
            latest = next((s for s in _listed(api, creds, slug, 20) if s.ref == ref), latest)
        except MedkitError as exc:
            warn(f"submitted, but its status could not be read: {exc.message}")
            return latest
        left = deadline - time.monotonic()
        if latest is not None and latest.status in ("COMPLETE", "ERROR") or left <= 0:
            return latest
        info(f"submission {ref}: {latest.status if latest else 'not listed yet'}, checking again")
        time.sleep(min(every, left))


def submit_file(
    creds: Credentials, slug: str, path: str | os.PathLike[str], message: str, wait: float = 0.0, every: float = 5.0
) -> SubmitResult:
    """Upload a submission file to a competition and, with ``wait`` > 0, poll its status and score.

    Args:
        creds: From `find_credentials`.
        slug: The competition's Kaggle slug.
        path: The (validated) submission file.
        message: The submission description.
        wait: Seconds to wait for the score (0: do not poll).
        every: Seconds between polls.

    Returns:
        The registered submission.

    Raises:
        SubmitError: Refused credentials (401), forbidden (403: rules not accepted), unknown competition (404), a
            failed upload, or no submission ref (nothing was submitted).
        OfflineError: Kaggle cannot be reached.
    """
    api = _api(creds)
    name = Path(path).name
    with _client_errors(creds, slug, "submit"):
        response = api.competition_submit(str(path), message, slug, quiet=True)
    text = creds.scrub(str(getattr(response, "message", "") or ""))
    if text == getattr(api, "COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE", None):
        raise SubmitError(f"the upload of {name} to Kaggle failed; nothing was submitted", hint="try again later")
    ref = int(getattr(response, "ref", 0) or 0)
    if ref == 0:
        raise SubmitError(
            f"Kaggle did not register the submission of {name} (no submission ref){': ' + text if text else ''}",
            hint="nothing counts as submitted; check `medkit submit --status` and try again",
        )
    polled = _poll(api, creds, slug, ref, wait, every) if wait > 0 else None
    return SubmitResult(ref, text, polled)


def download_files(
    creds: Credentials, slug: str, out: str | os.PathLike[str], file_name: str | None = None
) -> list[Path]:
    """Download a competition's files (or one of them) into ``out``, unzipped.

    Returns:
        The files now in ``out`` that the download wrote or replaced.

    Raises:
        SubmitError: Refused credentials, rules not accepted (403), unknown competition or file (404).
        OfflineError: Kaggle cannot be reached.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    api = _api(creds)
    with _client_errors(creds, slug, "download the data"):
        if file_name:
            api.competition_download_file(slug, file_name, path=str(out), force=True, quiet=True, unzip=True)
        else:
            api.competition_download_files(slug, path=str(out), force=True, quiet=True, unzip=True)
    return sorted(p for p in out.rglob("*") if p.is_file() and before.get(p) != p.stat().st_mtime_ns)


def push_kernel_bundle(creds: Credentials, dataset_dir: Path, kernel_dir: Path, message: str) -> KernelPush:
    """Upload the weights dataset (a new one, or a new version) and push the inference notebook.

    Raises:
        SubmitError: Kaggle refused the dataset or the notebook (its error is quoted).
    """
    api = _api(creds)
    dataset = json.loads((dataset_dir / "dataset-metadata.json").read_text(encoding="utf-8"))["id"]
    with _client_errors(creds, dataset, "create the weights dataset"):
        made = api.dataset_create_new(str(dataset_dir), public=False, quiet=True, convert_to_csv=False, dir_mode="zip")
        if getattr(made, "status", "") == "error" and "already in use" in str(getattr(made, "error", "")):
            made = api.dataset_create_version(
                str(dataset_dir), message, quiet=True, convert_to_csv=False, dir_mode="zip"
            )
    if getattr(made, "error", None):
        raise SubmitError(f"Kaggle refused the dataset {dataset}: {creds.scrub(str(made.error))}")
    kernel = json.loads((kernel_dir / "kernel-metadata.json").read_text(encoding="utf-8"))["id"]
    with _client_errors(creds, kernel, "push the notebook"):
        pushed = api.kernels_push(str(kernel_dir))
    if pushed is None or getattr(pushed, "error", None):
        raise SubmitError(f"Kaggle refused the notebook {kernel}: {creds.scrub(str(getattr(pushed, 'error', '')))}")
    return KernelPush(
        dataset=dataset,
        dataset_url=str(getattr(made, "url", "") or ""),
        kernel=kernel,
        kernel_url=str(getattr(pushed, "url", "") or ""),
        version=getattr(pushed, "version_number", None),
    )
