"""The only modules that talk to a Google SDK: Firestore, Cloud Storage, Pub/Sub."""
