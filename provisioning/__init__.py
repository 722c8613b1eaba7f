"""The technician's tool that turns a factory-fresh box into an enrolled node; see issue tracker."""
