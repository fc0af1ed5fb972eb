"""Other services' APIs, each a translation layer over the manager in a module of its own (`openai`: OpenAI's
Conversations API under `/v1`), with its own route table and error shape: no second store, no second set of rules."""
