"""MongoDB: pymongo instead of mongodump/mongorestore, in mongodump's archive format."""
