// Package githttp serves one Git repository read-only over Git's smart HTTP
// protocol with go-git's in-process upload-pack, so shoal dev needs no git
// binary and no web server to give its agents an http:// remote.
package githttp

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5/plumbing/format/pktline"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/plumbing/transport/server"
)

// Handler serves the repository whose Git directory is gitDir (the .git of
// a work tree, or a bare repository) at any URL path: clients fetch
// <url>/info/refs and POST <url>/git-upload-pack. Each request opens the
// repository afresh, so commits made meanwhile are served at once.
func Handler(gitDir string, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	srv := server.NewServer(server.NewFilesystemLoader(osfs.New(gitDir)))
	ep, _ := transport.NewEndpoint("/")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := serve(srv, ep, w, r)
		if err != nil {
			log.Warn("git http", "method", r.Method, "path", r.URL.Path, "err", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
}

func serve(srv transport.Transport, ep *transport.Endpoint, w http.ResponseWriter, r *http.Request) error {
	switch {
	case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/info/refs"):
		if svc := r.URL.Query().Get("service"); svc != transport.UploadPackServiceName {
			http.Error(w, "only smart HTTP fetches are served (service=git-upload-pack)", http.StatusForbidden)
			return nil
		}
		sess, err := srv.NewUploadPackSession(ep, nil)
		if err != nil {
			return fmt.Errorf("open repository: %w", err)
		}
		defer sess.Close()
		refs, err := sess.AdvertisedReferencesContext(r.Context())
		if err != nil {
			return fmt.Errorf("advertise refs: %w", err)
		}
		refs.Prefix = [][]byte{[]byte("# service=" + transport.UploadPackServiceName), pktline.Flush}
		w.Header().Set("Content-Type", "application/x-git-upload-pack-advertisement")
		w.Header().Set("Cache-Control", "no-cache")
		return refs.Encode(w)
	case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/"+transport.UploadPackServiceName):
		req := packp.NewUploadPackRequest()
		if err := req.Decode(r.Body); err != nil {
			http.Error(w, "bad upload-pack request: "+err.Error(), http.StatusBadRequest)
			return nil
		}
		sess, err := srv.NewUploadPackSession(ep, nil)
		if err != nil {
			return fmt.Errorf("open repository: %w", err)
		}
		defer sess.Close()
		resp, err := sess.UploadPack(r.Context(), req)
		if err != nil {
			return fmt.Errorf("upload-pack: %w", err)
		}
		defer resp.Close()
		w.Header().Set("Content-Type", "application/x-git-upload-pack-result")
		w.Header().Set("Cache-Control", "no-cache")
		return resp.Encode(w)
	default:
		http.Error(w, "not found: this server answers Git smart HTTP fetches only", http.StatusNotFound)
		return nil
	}
}
