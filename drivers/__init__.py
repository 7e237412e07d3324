"""Database drivers: one module per database, behind ``base.Driver``.

A new database is a module here and a line in ``driver_class`` and ``NAMES``; the flows and the Stash layer
pick it by name (``--driver``) or by the AppBinding's ``spec.type``.
"""

from .base import Driver, DriverOptions, Dump, Endpoint, HostDump, Item, RestoreHost, SnapshotFiles

#: the drivers this version has, by the name --driver takes
NAMES = ("postgres", "mongodb", "elasticsearch")


def name_for_type(app_type: str) -> str | None:
    """The driver for an AppBinding's spec.type ("kubedb.com/postgres", "kubedb.com/mongodb", "mongo",
    "kubedb.com/elasticsearch"), or None."""
    t = app_type.lower()
    if "mongo" in t:
        return "mongodb"
    if "elastic" in t or "opensearch" in t:
        return "elasticsearch"
    return next((name for name in NAMES if name in t), None)


def driver_class(name: str) -> type[Driver]:
    """The driver called ``name``; its module (and its client libraries) is imported only when it is used."""
    if name == "postgres":
        from .postgres import PostgresDriver

        return PostgresDriver
    if name == "mongodb":
        from .mongodb.driver import MongoDriver

        return MongoDriver
    if name == "elasticsearch":
        from .elasticsearch.driver import ElasticsearchDriver

        return ElasticsearchDriver
    raise KeyError(name)


__all__ = ["NAMES", "Driver", "DriverOptions", "Dump", "Endpoint", "HostDump", "Item", "RestoreHost", "SnapshotFiles",
           "driver_class",
           "name_for_type"]
