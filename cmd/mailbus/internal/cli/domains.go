package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mailbus/mailbus/pkg/dkimkey"
	mailbusv1 "github.com/mailbus/mailbus/pkg/gen/mailbus/v1"
)

func domainsCmd() *cobra.Command {
	var api apiFlags
	var tenant string
	cmd := &cobra.Command{
		Use:   "domains",
		Short: "list the sender domains and the DNS records to publish for them (DKIM TXT records)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := api.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			c := mailbusv1.NewConfigServiceClient(conn)
			var domains []*mailbusv1.Domain
			for page := ""; ; {
				resp, err := c.ListDomains(cmd.Context(), &mailbusv1.ListDomainsRequest{TenantId: tenant, PageToken: page, PageSize: 100})
				if err != nil {
					return fmt.Errorf("list domains: %w", err)
				}
				domains = append(domains, resp.GetDomains()...)
				if page = resp.GetNextPageToken(); page == "" {
					break
				}
			}
			printDomains(cmd.OutOrStdout(), domains)
			return nil
		},
	}
	api.register(cmd)
	cmd.Flags().StringVar(&tenant, "tenant", "", "only this tenant's domains")
	return cmd
}

// printDomains prints each domain with its DKIM records in zone-file form,
// ready to paste: long values split into quoted strings of at most 255
// characters, as a TXT record's strings must be.
func printDomains(w io.Writer, domains []*mailbusv1.Domain) {
	if len(domains) == 0 {
		fmt.Fprintln(w, "no domains configured")
		return
	}
	for i, d := range domains {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "; %s (tenant %s)\n", d.GetName(), d.GetTenantId())
		if len(d.GetDkimKeys()) == 0 {
			fmt.Fprintln(w, "; no DKIM keys: mail from this domain is not signed")
		}
		for _, k := range d.GetDkimKeys() {
			state := ""
			if !k.GetActive() {
				state = " (inactive: not signing)"
			}
			fmt.Fprintf(w, "; DKIM selector %s, %s%s\n", k.GetSelector(), strings.TrimPrefix(k.GetAlgorithm().String(), "DKIM_ALGORITHM_"), state)
			fmt.Fprintln(w, dkimkey.ZoneTXT(k.GetDnsName(), k.GetDnsTxtValue()))
		}
	}
}
