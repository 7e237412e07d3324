"""The Elasticsearch and OpenSearch driver: a streaming dump through the official clients, or Stash's
interim-volume flow through multielasticdump."""
