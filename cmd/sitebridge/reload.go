package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/sitebridge/sitebridge/gateway"
)

// cmdReload asks an instance to read its config file again (as SIGHUP
// does) and prints what changed, or why the new config was refused.
func cmdReload(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("reload", stderr)
	var ac adminConn
	addAdminFlags(fs, &ac, "admin `HOST:PORT` of the instance ($SITEBRIDGE_ADMIN)", "give up after `D`")
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, ac.timeout)
	defer cancel()
	base := ac.admin
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(base, "/")+"/api/v1/reload", nil)
	if err != nil {
		return err
	}
	if t := ac.resolvedToken(); t != "" {
		req.Header.Set("Authorization", "Bearer "+t)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("reload %s: %w", ac.admin, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusOK {
		var res gateway.ReloadResult
		if err := json.Unmarshal(body, &res); err != nil {
			return fmt.Errorf("reload %s: %w", ac.admin, err)
		}
		if len(res.Changed) == 0 {
			fmt.Fprintln(stdout, "reloaded: nothing changed")
		} else {
			fmt.Fprintf(stdout, "reloaded: %s\n", strings.Join(res.Changed, ", "))
		}
		return nil
	}
	var refused struct {
		Error  string   `json:"error"`
		Errors []string `json:"errors"`
	}
	if json.Unmarshal(body, &refused) != nil || refused.Error == "" {
		return fmt.Errorf("reload %s: %s: %s", ac.admin, resp.Status, strings.TrimSpace(string(body)))
	}
	for _, e := range refused.Errors {
		fmt.Fprintln(stderr, e)
	}
	return fmt.Errorf("reload refused: %s", refused.Error)
}
