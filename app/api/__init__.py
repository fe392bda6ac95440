"""The HTTP layer: routes, multipart parsing, problem details and middleware."""
