"""Hash feeds: signed, incremental, retractable lists of hashes shared between instances
(docs/feed-protocol.md). A stage: it imports no other stage; the store keeps the published log."""
