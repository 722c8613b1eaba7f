"""The store's order desk: assigned orders from the cloud, and the staff's steps on them."""
