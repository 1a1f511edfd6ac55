"""The durable feed pipeline: outbox -> bus (RabbitMQ or Redis Streams) -> fan-out consumers."""
