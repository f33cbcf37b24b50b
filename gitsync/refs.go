package gitsync

import (
	"fmt"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
)

func refSpec(branch string) config.RefSpec {
	return config.RefSpec(fmt.Sprintf("+refs/heads/%s:refs/remotes/%s/%s", branch, git.DefaultRemoteName, branch))
}

func remoteConfig(urls []string) *config.RemoteConfig {
	return &config.RemoteConfig{Name: git.DefaultRemoteName, URLs: urls}
}
