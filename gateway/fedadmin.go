package gateway

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/sitebridge/sitebridge/store"
)

// The federation part of the admin API:
//
//	GET  /api/v1/federation                               participants of the site, summed over its members
//	POST /api/v1/federation/{participant}/{operation}     start, stop, pause, resume, replicate-all, start-with-no-backlog
//	GET  /api/v1/federation/digests?scheme=S              every partition's digest (for fed verify)
//	GET  /api/v1/federation/partitions/{n}/keys?scheme=S  a partition's live keys with versions
func (s *Supervisor) federationRoutes(mux *http.ServeMux) {
	mux.Handle("GET /api/v1/federation", s.requireToken(s.withStore(func(w http.ResponseWriter, r *http.Request, st *store.Store) {
		list, err := st.FedStatus(r.Context())
		if err != nil {
			writeStoreError(w, err)
			return
		}
		if list == nil {
			list = []store.FedStatus{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"instance": s.cfg.Instance, "site": s.cfg.Site, "participants": list})
	})))
	mux.Handle("POST /api/v1/federation/{participant}/{op}", s.requireToken(s.withStore(func(w http.ResponseWriter, r *http.Request, st *store.Store) {
		p, op := r.PathValue("participant"), r.PathValue("op")
		if err := st.FedControl(r.Context(), p, op); err != nil {
			writeStoreError(w, err)
			return
		}
		s.log.Info("federation operation (admin API)", "participant", p, "operation", op, "from", r.RemoteAddr)
		writeJSON(w, http.StatusOK, map[string]string{"participant": p, "operation": op, "result": "done"})
	})))
	mux.Handle("GET /api/v1/federation/digests", s.requireToken(s.withStore(func(w http.ResponseWriter, r *http.Request, st *store.Store) {
		scheme := schemeParam(r, st)
		d, err := st.Digests(r.Context(), scheme)
		if err != nil {
			writeStoreError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"site": s.cfg.Site, "scheme": scheme, "partitions": d})
	})))
	mux.Handle("GET /api/v1/federation/partitions/{part}/keys", s.requireToken(s.withStore(func(w http.ResponseWriter, r *http.Request, st *store.Store) {
		part, err := strconv.Atoi(r.PathValue("part"))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "partition must be a number", "code": "bad-request"})
			return
		}
		scheme := schemeParam(r, st)
		keys, err := st.PartitionKeys(r.Context(), scheme, part)
		if err != nil {
			writeStoreError(w, err)
			return
		}
		if keys == nil {
			keys = []store.KeyVersion{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"site": s.cfg.Site, "scheme": scheme, "partition": part, "keys": keys})
	})))
}

// schemeParam is ?scheme=, or the first scheme.
func schemeParam(r *http.Request, st *store.Store) string {
	if v := r.URL.Query().Get("scheme"); v != "" {
		return v
	}
	if sc := st.Schemes(); len(sc) > 0 {
		return sc[0]
	}
	return ""
}

// withStore runs h with the running instance's store, or answers 503.
func (s *Supervisor) withStore(h func(http.ResponseWriter, *http.Request, *store.Store)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in := s.Current()
		if in == nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "instance is stopped", "code": "stopped"})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.Store.RequestTimeout.D())
		defer cancel()
		h(w, r.WithContext(ctx), in.store)
	})
}

func writeStoreError(w http.ResponseWriter, err error) {
	code, name := http.StatusInternalServerError, "internal"
	switch {
	case errors.Is(err, store.ErrUnknownParticipant):
		code, name = http.StatusNotFound, "unknown-participant"
	case errors.Is(err, store.ErrBadName):
		code, name = http.StatusBadRequest, "bad-request"
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		code, name = http.StatusServiceUnavailable, "unavailable"
		w.Header().Set("Retry-After", "1")
	case errors.Is(err, store.ErrStopped):
		code, name = http.StatusServiceUnavailable, "stopped"
	}
	writeJSON(w, code, map[string]string{"error": err.Error(), "code": name})
}
