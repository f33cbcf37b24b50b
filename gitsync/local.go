package gitsync

import (
	"errors"
	"fmt"
	"path/filepath"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/plumbing/transport/client"
	"github.com/go-git/go-git/v5/plumbing/transport/server"
)

// localScheme names go-git's in-process Git server, which serves local
// repositories (file:// URLs and plain paths) without running the
// git-upload-pack binary that go-git's own file transport needs, so a node
// with no git installed can follow a repository on local or removable media.
const localScheme = "gitsync-local"

func init() {
	client.InstallProtocol(localScheme, server.NewClient(localLoader{}))
}

// localLoader opens a bare or non-bare repository at the endpoint's path.
type localLoader struct{}

func (localLoader) Load(ep *transport.Endpoint) (storer.Storer, error) {
	repo, err := git.PlainOpenWithOptions(ep.Path, &git.PlainOpenOptions{EnableDotGitCommonDir: true})
	if errors.Is(err, git.ErrRepositoryNotExists) {
		return nil, transport.ErrRepositoryNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", ep.Path, err)
	}
	return repo.Storer, nil
}

// transportURL maps the configured URL to the one go-git is given: local
// repositories go through the in-process server, others are unchanged.
func transportURL(raw string) (string, error) {
	ep, err := transport.NewEndpoint(raw)
	if err != nil {
		return "", fmt.Errorf("parse repository url: %w", err)
	}
	if ep.Protocol != "file" {
		return raw, nil
	}
	p, err := filepath.Abs(ep.Path)
	if err != nil {
		return "", fmt.Errorf("repository path: %w", err)
	}
	return localScheme + "://" + filepath.ToSlash(p), nil
}
