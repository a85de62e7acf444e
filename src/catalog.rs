//! The built-in catalog: Azure's KMS activation endpoints per cloud, and each cloud's ARM and
//! Entra ID (authority) endpoints.
//!
//! Source: Microsoft Learn, "Windows activation fails in forced tunneling scenario"
//! (troubleshoot/azure/virtual-machines/windows/custom-routes-enable-kms-activation, 2024-07-17
//! revision). Pure data; keep it identical to `docs/kms-endpoints.md` when Microsoft changes it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;

/// The TCP port KMS activation uses.
pub const KMS_PORT: u16 = 1688;

/// An Azure cloud (sovereign or public).
///
/// In a policy (`spec.kms.cloud`): the cloud whose KMS addresses are routed; when absent, the
/// controller's own cloud, its `--cloud` flag (`KMSROUTE_CLOUD`; chart value `azure.cloud`;
/// default `AzurePublic`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum Cloud {
    AzurePublic,
    #[serde(rename = "AzureUSGovernment")]
    AzureUsGovernment,
    AzureChina,
    /// Microsoft Cloud Germany, closed on 2021-10-29. Accepted with a deprecation warning.
    AzureGermany,
}

impl Cloud {
    pub const ALL: [Cloud; 4] = [
        Cloud::AzurePublic,
        Cloud::AzureUsGovernment,
        Cloud::AzureChina,
        Cloud::AzureGermany,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cloud::AzurePublic => "AzurePublic",
            Cloud::AzureUsGovernment => "AzureUSGovernment",
            Cloud::AzureChina => "AzureChina",
            Cloud::AzureGermany => "AzureGermany",
        }
    }

    /// Parses a cloud name case-insensitively, also accepting the names the Azure CLI uses
    /// (`AzureCloud`, `AzureUSGovernment`, `AzureChinaCloud`, `AzureGermanCloud`).
    pub fn parse(s: &str) -> Result<Cloud, crate::ids::Invalid> {
        let l = s.to_ascii_lowercase();
        match l.as_str() {
            "azurepublic" | "azurecloud" | "public" => Ok(Cloud::AzurePublic),
            "azureusgovernment" | "usgovernment" | "azureusgovernmentcloud" => {
                Ok(Cloud::AzureUsGovernment)
            }
            "azurechina" | "azurechinacloud" | "china" => Ok(Cloud::AzureChina),
            "azuregermany" | "azuregermancloud" | "germany" => Ok(Cloud::AzureGermany),
            _ => Err(crate::ids::Invalid(format!(
                "unknown cloud {s:?}; expected one of AzurePublic, AzureUSGovernment, AzureChina, AzureGermany"
            ))),
        }
    }

    pub fn endpoints(self) -> &'static CloudEndpoints {
        match self {
            Cloud::AzurePublic => &AZURE_PUBLIC,
            Cloud::AzureUsGovernment => &AZURE_US_GOVERNMENT,
            Cloud::AzureChina => &AZURE_CHINA,
            Cloud::AzureGermany => &AZURE_GERMANY,
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything kmsroute needs to know about one cloud.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudEndpoints {
    pub cloud: Cloud,
    pub kms_hosts: &'static [&'static str],
    pub kms_addresses: &'static [Ipv4Addr],
    pub kms_port: u16,
    pub arm_endpoint: &'static str,
    pub authority_host: &'static str,
    /// Set for a cloud that no longer exists, with the date and a note.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired: Option<&'static str>,
}

static AZURE_PUBLIC: CloudEndpoints = CloudEndpoints {
    cloud: Cloud::AzurePublic,
    kms_hosts: &["azkms.core.windows.net", "kms.core.windows.net"],
    kms_addresses: &[
        Ipv4Addr::new(20, 118, 99, 224),
        Ipv4Addr::new(40, 83, 235, 53),
        Ipv4Addr::new(23, 102, 135, 246),
    ],
    kms_port: KMS_PORT,
    arm_endpoint: "https://management.azure.com",
    authority_host: "https://login.microsoftonline.com",
    retired: None,
};

static AZURE_US_GOVERNMENT: CloudEndpoints = CloudEndpoints {
    cloud: Cloud::AzureUsGovernment,
    kms_hosts: &["azkms.core.usgovcloudapi.net", "kms.core.usgovcloudapi.net"],
    kms_addresses: &[Ipv4Addr::new(52, 126, 105, 2), Ipv4Addr::new(23, 97, 0, 13)],
    kms_port: KMS_PORT,
    arm_endpoint: "https://management.usgovcloudapi.net",
    authority_host: "https://login.microsoftonline.us",
    retired: None,
};

static AZURE_CHINA: CloudEndpoints = CloudEndpoints {
    cloud: Cloud::AzureChina,
    kms_hosts: &["azkms.core.chinacloudapi.cn", "kms.core.chinacloudapi.cn"],
    kms_addresses: &[
        Ipv4Addr::new(159, 27, 28, 100),
        Ipv4Addr::new(163, 228, 64, 161),
        Ipv4Addr::new(42, 159, 7, 249),
    ],
    kms_port: KMS_PORT,
    arm_endpoint: "https://management.chinacloudapi.cn",
    authority_host: "https://login.chinacloudapi.cn",
    retired: None,
};

static AZURE_GERMANY: CloudEndpoints = CloudEndpoints {
    cloud: Cloud::AzureGermany,
    kms_hosts: &["kms.core.cloudapi.de"],
    kms_addresses: &[Ipv4Addr::new(51, 4, 143, 248)],
    kms_port: KMS_PORT,
    arm_endpoint: "https://management.microsoftazure.de",
    authority_host: "https://login.microsoftonline.de",
    retired: Some(
        "Microsoft Cloud Germany closed on 2021-10-29; use AzurePublic (Germany regions) instead",
    ),
};

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(c: Cloud) -> Vec<String> {
        c.endpoints()
            .kms_addresses
            .iter()
            .map(|a| a.to_string())
            .collect()
    }

    #[test]
    fn catalog_matches_microsoft_documentation() {
        assert_eq!(
            addrs(Cloud::AzurePublic),
            ["20.118.99.224", "40.83.235.53", "23.102.135.246"]
        );
        assert_eq!(
            addrs(Cloud::AzureUsGovernment),
            ["52.126.105.2", "23.97.0.13"]
        );
        assert_eq!(
            addrs(Cloud::AzureChina),
            ["159.27.28.100", "163.228.64.161", "42.159.7.249"]
        );
        assert_eq!(addrs(Cloud::AzureGermany), ["51.4.143.248"]);
        assert_eq!(
            Cloud::AzurePublic.endpoints().kms_hosts,
            ["azkms.core.windows.net", "kms.core.windows.net"]
        );
        assert_eq!(
            Cloud::AzureUsGovernment.endpoints().arm_endpoint,
            "https://management.usgovcloudapi.net"
        );
        assert_eq!(
            Cloud::AzureChina.endpoints().authority_host,
            "https://login.chinacloudapi.cn"
        );
    }

    #[test]
    fn the_mistyped_2022_address_is_not_in_the_catalog() {
        assert!(!addrs(Cloud::AzurePublic).contains(&"20.118.99.244".to_string()));
    }

    #[test]
    fn only_germany_is_retired() {
        for c in Cloud::ALL {
            assert_eq!(
                c.endpoints().retired.is_some(),
                c == Cloud::AzureGermany,
                "{c}"
            );
            assert_eq!(c.endpoints().kms_port, 1688);
        }
    }

    #[test]
    fn cloud_names_parse_including_cli_spellings() {
        assert_eq!(Cloud::parse("AzureCloud"), Ok(Cloud::AzurePublic));
        assert_eq!(
            Cloud::parse("azureusgovernment"),
            Ok(Cloud::AzureUsGovernment)
        );
        assert_eq!(Cloud::parse("AzureChinaCloud"), Ok(Cloud::AzureChina));
        assert!(Cloud::parse("Mars").is_err());
        for c in Cloud::ALL {
            assert_eq!(Cloud::parse(c.name()), Ok(c));
        }
    }
}
