"""The Switchyard API: pydantic models of ModelEndpoint and ModelGateway."""
