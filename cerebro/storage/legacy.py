"""The original Cerebro's store arguments, mapped onto LocalStore and HDFSStore.  Pure.

The original ``LocalStore(prefix_path, train_path=None, val_path=None, runs_path=None,
temp_dir=None)`` and ``HDFSStore(prefix_path, ..., host=None, port=None, user=None,
kerb_ticket=None, driver='libhdfs', extra_conf=None)`` are accepted by the stores themselves
(keyword arguments); what cannot mean anything here warns (docs/migrating.md).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from cerebro._checks import check_int, param_error
from cerebro._compat import warn_ignored

__all__ = ["ignore_layout_arguments", "hdfs_prefix", "ignore_extra_conf"]

_LAYOUT = {
    "train_path": "the prepared training data is written under prefix_path (data/<key>/train), "
                  "and reused when the same data, split and worker count come again",
    "val_path": "the prepared validation data is written under prefix_path (data/<key>/val)",
    "runs_path": "each experiment's checkpoints, logs and journal are written under prefix_path "
                 "(experiments/<name>)",
    "temp_dir": "the store writes its temporary files next to their destination, inside prefix_path",
}


def ignore_layout_arguments(owner: str, stacklevel: int, **given: Any) -> None:
    """Warn for each of the original's ``train_path``, ``val_path``, ``runs_path``, ``temp_dir``
    that was given (not None); everything an experiment writes lives under the prefix here."""
    for name, value in given.items():
        if value is not None:
            if not isinstance(value, (str, os.PathLike)):
                raise param_error(owner, name, "a path or None", value, TypeError)
            warn_ignored(owner, name, _LAYOUT[name], stacklevel=stacklevel + 1)


def ignore_extra_conf(extra_conf: Any, stacklevel: int) -> None:
    """The original's ``extra_conf`` (Hadoop properties for the client) is not passed on."""
    if extra_conf is None:
        return
    if not isinstance(extra_conf, dict):
        raise param_error("HDFSStore", "extra_conf", "a dict of Hadoop properties or None", extra_conf, TypeError)
    if extra_conf:
        warn_ignored(
            "HDFSStore", "extra_conf",
            f"{sorted(extra_conf)} are not passed to the HDFS client; put them in the Hadoop "
            "configuration ($HADOOP_CONF_DIR/core-site.xml, hdfs-site.xml), which libhdfs reads "
            "(block replication: replication=)",
            stacklevel=stacklevel + 1,
        )


def hdfs_prefix(prefix_path: Any, host: Any, port: Any) -> Any:
    """The ``hdfs://host[:port]/path`` URL for the original's ``prefix_path`` (a URL, or
    ``hdfs:///path`` / ``/path`` with ``host=`` and ``port=``); ``port=0`` is the default port.

    Returns ``prefix_path`` unchanged without host and port, so that the URL parser reports
    what is wrong with it; raises ``ValueError`` when ``host``/``port`` contradict the URL.
    """
    if host is None and port in (None, 0):
        return prefix_path
    if host is not None and (not isinstance(host, str) or not host.strip() or "/" in host or ":" in host):
        raise param_error("HDFSStore", "host", "a namenode host name (no scheme, port or path) or None", host)
    if port is not None:
        port = check_int("HDFSStore", "port", port, minimum=0, maximum=65535, expected="an int in [0, 65535] or None")
    port = port or None
    if isinstance(prefix_path, os.PathLike):
        prefix_path = os.fspath(prefix_path)
    if not isinstance(prefix_path, str):
        return prefix_path
    parts = urlsplit(prefix_path.strip())
    if parts.query or parts.fragment or "@" in parts.netloc:
        return prefix_path   # the parser names what is not supported
    if parts.scheme.lower() == "hdfs" and parts.netloc:
        try:
            url_port = parts.port
        except ValueError:
            return prefix_path   # the parser names the bad port
        for name, given, in_url in (("host", host, parts.hostname), ("port", port, url_port)):
            if given is not None and in_url is not None and str(given).lower() != str(in_url).lower():
                raise ValueError(
                    f"The '{name}' parameter of HDFSStore is {given!r} but prefix_path {prefix_path!r} says "
                    f"{in_url!r}; give the namenode once, in the URL (e.g. 'hdfs://namenode:8020/path')."
                )
        host, port = parts.hostname, port or url_port
        path = parts.path
    elif (parts.scheme.lower() == "hdfs" or not parts.scheme) and parts.path.startswith("/") and not parts.netloc:
        if host is None:
            raise ValueError(
                f"HDFSStore needs the namenode for prefix_path {prefix_path!r}: pass host='namenode' (and port=), "
                "or write the URL in full, e.g. 'hdfs://namenode:8020/user/me/cerebro'."
            )
        path = parts.path
    else:
        return prefix_path
    return f"hdfs://{host}{'' if port is None else f':{port}'}{path}"
