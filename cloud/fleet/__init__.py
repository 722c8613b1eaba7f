"""cloud.fleet: regions, stores and boxes; what each box reports; the bus's operator views
(commands per box, failed messages and their replay). Declared in `cloud.fleet.engine`."""
