//! Azure service tag names a route's `addressPrefix` may hold instead of a CIDR.
//!
//! A representative set, not all of Azure's: the tags of Microsoft's "Virtual network service
//! tags" page (learn.microsoft.com/azure/virtual-network/service-tags-overview) that are
//! commonly used in user-defined routes. Each may also be scoped to a region
//! (`Storage.WestEurope`, `AzureCloud.eastus`). Compared case-insensitively, as ARM does. An
//! unknown name is refused with 400, as Azure refuses it.

const TAGS: &[&str] = &[
    "ActionGroup",
    "ApiManagement",
    "AppConfiguration",
    "AppService",
    "AppServiceManagement",
    "AzureActiveDirectory",
    "AzureAdvancedThreatProtection",
    "AzureBackup",
    "AzureBotService",
    "AzureCloud",
    "AzureCognitiveSearch",
    "AzureConnectors",
    "AzureContainerRegistry",
    "AzureCosmosDB",
    "AzureDatabricks",
    "AzureDataExplorerManagement",
    "AzureDataLake",
    "AzureDevOps",
    "AzureDigitalTwins",
    "AzureEventGrid",
    "AzureFrontDoor.Backend",
    "AzureFrontDoor.FirstParty",
    "AzureFrontDoor.Frontend",
    "AzureInformationProtection",
    "AzureIoTHub",
    "AzureKeyVault",
    "AzureMachineLearning",
    "AzureMonitor",
    "AzurePortal",
    "AzureResourceManager",
    "AzureSignalR",
    "AzureSiteRecovery",
    "AzureTrafficManager",
    "AzureUpdateDelivery",
    "BatchNodeManagement",
    "CognitiveServicesManagement",
    "DataFactory",
    "EventHub",
    "GatewayManager",
    "GuestAndHybridManagement",
    "HDInsight",
    "LogicApps",
    "MicrosoftContainerRegistry",
    "PowerBI",
    "PowerPlatformInfra",
    "ServiceBus",
    "ServiceFabric",
    "Sql",
    "SqlManagement",
    "Storage",
    "StorageSyncService",
    "WindowsAdminCenter",
    "WindowsVirtualDesktop",
];

/// True when `name` is a known service tag, alone or with a region suffix.
pub fn is_service_tag(name: &str) -> bool {
    let known = |t: &str| TAGS.iter().any(|k| k.eq_ignore_ascii_case(t));
    if known(name) {
        return true;
    }
    match name.rsplit_once('.') {
        Some((tag, region)) => {
            known(tag) && !region.is_empty() && region.chars().all(|c| c.is_ascii_alphanumeric())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_service_tag;

    #[test]
    fn known_tags_pass_alone_with_a_region_and_in_any_case() {
        for t in [
            "AzureCloud",
            "storage",
            "Storage.WestEurope",
            "AzureFrontDoor.Backend",
            "AzureCloud.eastus2",
        ] {
            assert!(is_service_tag(t), "{t}");
        }
    }

    #[test]
    fn unknown_names_and_malformed_regions_are_refused() {
        for t in [
            "nonsense",
            "Internet",
            "Storage.",
            "Storage.West Europe",
            "NotATag.WestEurope",
            "",
        ] {
            assert!(!is_service_tag(t), "{t}");
        }
    }
}
