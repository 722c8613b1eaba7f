from tests.access.conftest import admin, world  # noqa: F401  (fixtures)
from tests.cloud.conftest import db_url, engine  # noqa: F401  (fixtures)
