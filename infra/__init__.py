"""Deployment: the embedded Apache Kafka broker launcher; docker-compose and the image live beside it."""
