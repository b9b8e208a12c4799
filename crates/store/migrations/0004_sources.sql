-- Where a workspace's code comes from: a Git repository (and branch) cloned into
-- ~/project at its first start.
ALTER TABLE workspaces ADD COLUMN repo_url TEXT CHECK (repo_url <> '');
ALTER TABLE workspaces ADD COLUMN repo_branch TEXT CHECK (repo_branch <> '');
