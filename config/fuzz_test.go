package config

import (
	"errors"
	"os"
	"reflect"
	"slices"
	"testing"
)

// FuzzParse checks that Parse never panics, that every config it accepts
// survives Marshal and Parse unchanged, and that every error it reports
// has a line (except for an empty file).
func FuzzParse(f *testing.F) {
	for _, tc := range slices.Concat(validConfigs, fedValidConfigs) {
		f.Add([]byte(tc.yaml))
	}
	for _, tc := range slices.Concat(invalidConfigs, fedInvalidConfigs) {
		f.Add([]byte(tc.yaml))
	}
	for _, name := range []string{"example-cloud.yaml", "example-onprem.yaml"} {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(testFile, data)
		if err != nil {
			if c != nil {
				t.Fatal("Parse returned both a config and an error")
			}
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("Parse error is not a non-empty Errors: %#v", err)
			}
			for _, e := range errs {
				if e.Line <= 0 && e.Msg != "empty config file" {
					t.Errorf("error without a line: %q", e)
				}
			}
			return
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		c2, err := Parse(testFile, out)
		if err != nil {
			t.Fatalf("re-Parse of\n%s\nfailed: %v", out, err)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("re-Parse differs:\n%#v\n%#v", c, c2)
		}
	})
}
