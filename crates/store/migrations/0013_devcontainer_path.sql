-- The devcontainer.json a workspace uses when its project has several (`cove create
-- --devcontainer-path`), relative to ~/project; NULL: the specification's search order.
ALTER TABLE workspaces ADD COLUMN devcontainer_path TEXT;
