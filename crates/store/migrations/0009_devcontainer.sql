-- A workspace's applied devcontainer.json: the container settings it asks for (JSON of
-- cove_core::ContainerConfig), the content hash of the configuration the container was
-- made from, and the hash last read from the volume ("rebuild needed" when they differ).
ALTER TABLE workspaces ADD COLUMN container_config TEXT CHECK (container_config IS NULL OR json_valid(container_config));
ALTER TABLE workspaces ADD COLUMN devcontainer_applied TEXT;
ALTER TABLE workspaces ADD COLUMN devcontainer_seen TEXT;
