"""A toy subject-to-video world, the small BindWeave trained on it, and its benchmark."""
