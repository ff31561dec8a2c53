using System.Diagnostics;
using System.Reflection;
using System.Text.Json;
using Microsoft.Extensions.Configuration;
using SdFunctions.Jobs;

namespace SdFunctions.Functions.Tests;

/// <summary>
/// infra/main.bicep against the app: the Function App's settings are the ones the app reads, with values that agree with
/// host.json and the queue trigger. Builds the template with the pinned Bicep CLI (infra/tools/bicep.sh, from NuGet).
/// </summary>
public class InfraTests
{
    private static readonly Lazy<JsonElement> Template = new(() =>
    {
        string root = AzuriteFixture.RepoRoot();
        var start = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = root };
        foreach (string arg in new[] { Path.Combine("infra", "tools", "bicep.sh"), "build", Path.Combine("infra", "main.bicep"), "--stdout" }) start.ArgumentList.Add(arg);
        using var bicep = Process.Start(start)!;
        var stdout = bicep.StandardOutput.ReadToEndAsync();
        string stderr = bicep.StandardError.ReadToEnd();
        bicep.WaitForExit();
        Assert.True(bicep.ExitCode == 0, $"bicep build failed: {stderr}");
        return JsonDocument.Parse(stdout.Result).RootElement.Clone();
    });

    private static JsonElement Resource(string type) =>
        Template.Value.GetProperty("resources").EnumerateArray().Single(r => r.GetProperty("type").GetString() == type);

    private static Dictionary<string, string> AppSettings() =>
        Resource("Microsoft.Web/sites").GetProperty("properties").GetProperty("siteConfig").GetProperty("appSettings").EnumerateArray()
            .ToDictionary(s => s.GetProperty("name").GetString()!, s => s.GetProperty("value").GetString()!);

    /// <summary>Settings the platform reads (the Functions host, App Service, Application Insights), not our code.</summary>
    private static readonly string[] PlatformSettings =
    [
        "FUNCTIONS_EXTENSION_VERSION", "FUNCTIONS_WORKER_RUNTIME", "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING", "WEBSITE_CONTENTSHARE",
        "APPLICATIONINSIGHTS_CONNECTION_STRING", "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    ];

    private static IEnumerable<string> Bindable(Type options) =>
        options.GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.CanWrite).Select(p => p.Name);

    [Fact]
    public void EveryAppSettingTheInfraSetsIsOneTheAppReads()
    {
        var settings = AppSettings();
        var readable = Bindable(typeof(JobsOptions)).Select(p => $"{JobsOptions.Section}__{p}")
            .Concat(Bindable(typeof(ModelOptions)).Select(p => $"{ModelOptions.Section}__{p}"))
            .Concat(Bindable(typeof(SdFunctions.Jobs.Webhooks.WebhookOptions)).Select(p => $"{SdFunctions.Jobs.Webhooks.WebhookOptions.Section}__{p}"))
            .Concat(["AzureWebJobsStorage__accountName", "AzureWebJobsStorage__credential", // the host's identity-based connection
                $"{JobsServiceCollectionExtensions.StorageSetting}__accountName", $"{JobsServiceCollectionExtensions.StorageSetting}__credential"]) // the trigger's and StorageClients
            .Concat(PlatformSettings).ToHashSet();
        Assert.All(settings.Keys, k => Assert.True(readable.Contains(k), $"{k} is set by the infra but read by nobody"));

        // What the app needs in Azure: identity-based storage (no connection string, no key), a model location, the compiled size.
        Assert.DoesNotContain("AzureWebJobsStorage", settings.Keys);
        Assert.Equal("managedidentity", settings["AzureWebJobsStorage__credential"]);
        Assert.Equal("managedidentity", settings["JobsStorage__credential"]);
        Assert.NotEqual(settings["AzureWebJobsStorage__accountName"], settings["JobsStorage__accountName"]); // the host's account is not the data's
        Assert.Contains("Model__BlobContainer", settings.Keys);
        Assert.Contains("Model__BlobPrefix", settings.Keys);
        Assert.Subset(settings.Keys.ToHashSet(), PlatformSettings.ToHashSet());
        Assert.Contains("Jobs__Width", settings.Keys);
        Assert.Contains("Jobs__Height", settings.Keys);
    }

    [Fact]
    public void TheInfraSettingsBindAndAgreeWithTheTriggerAndHostJson()
    {
        var template = Template.Value;
        var variables = template.GetProperty("variables");
        // The queue trigger listens on a constant; the infra must create that queue and its poison queue.
        Assert.Equal(JobQueue.Name, variables.GetProperty("queueName").GetString());
        Assert.Equal(SdFunctions.Jobs.Webhooks.WebhookQueue.Name, variables.GetProperty("webhookQueueName").GetString());
        using var host = JsonDocument.Parse(File.ReadAllText(Path.Combine(AzuriteFixture.RepoRoot(), "host.json")));
        Assert.Equal(host.RootElement.GetProperty("extensions").GetProperty("queues").GetProperty("maxDequeueCount").GetInt32(),
            variables.GetProperty("maxDequeueCount").GetInt32());
        var defaults = new JobsOptions();
        Assert.Contains($"createArray('{defaults.JobsContainer}', '{defaults.ImagesContainer}'",
            Resource("Microsoft.Storage/storageAccounts/blobServices/containers").GetProperty("name").GetString());

        // The literal values bind as the app binds them (a TimeSpan that doesn't parse would stop the app at start).
        var literal = AppSettings().Where(s => !s.Value.StartsWith('[') && (s.Key.StartsWith("Jobs__") || s.Key.StartsWith("Model__")))
            .ToDictionary(s => s.Key.Replace("__", ":"), s => (string?)s.Value);
        var config = new ConfigurationBuilder().AddInMemoryCollection(literal).Build();
        var model = config.GetSection(ModelOptions.Section).Get<ModelOptions>()!;
        Assert.Equal("/tmp/sdfunctions", model.CacheDirectory);
        var parameters = template.GetProperty("parameters");
        Assert.Equal(TimeSpan.Parse(parameters.GetProperty("imageUrlLifetime").GetProperty("defaultValue").GetString()!), defaults.ImageUrlLifetime);
    }

    [Fact]
    public void StorageIsPrivateAndTheDataAccountTakesNoKeys()
    {
        var accounts = Template.Value.GetProperty("resources").EnumerateArray()
            .Where(r => r.GetProperty("type").GetString() == "Microsoft.Storage/storageAccounts").ToList();
        Assert.Equal(3, accounts.Count); // data, the host's own, and the content share's
        foreach (var account in accounts)
        {
            var p = account.GetProperty("properties");
            Assert.Equal("TLS1_2", p.GetProperty("minimumTlsVersion").GetString());
            Assert.False(p.GetProperty("allowBlobPublicAccess").GetBoolean());
            Assert.True(p.GetProperty("supportsHttpsTrafficOnly").GetBoolean());
        }
        // The data account (jobs, images, models, queues) and the host's refuse shared keys; only the content share's account takes them.
        Assert.Single(accounts, a => a.GetProperty("properties").GetProperty("allowSharedKeyAccess").GetBoolean());
        var site = Resource("Microsoft.Web/sites").GetProperty("properties");
        Assert.True(site.GetProperty("httpsOnly").GetBoolean());
        Assert.Equal("Disabled", site.GetProperty("siteConfig").GetProperty("ftpsState").GetString());
        Assert.Equal("DOTNET-ISOLATED|10.0", site.GetProperty("siteConfig").GetProperty("linuxFxVersion").GetString());
    }

    private static IEnumerable<(string Scope, string Role)> AppRoleAssignments() =>
        Template.Value.GetProperty("resources").EnumerateArray()
            .Where(r => r.GetProperty("type").GetString() == "Microsoft.Authorization/roleAssignments"
                && r.GetProperty("properties").GetProperty("principalId").GetString()!.Contains("'Microsoft.Web/sites'"))
            .Select(r => (r.GetProperty("scope").GetString()!, r.GetProperty("properties").GetProperty("roleDefinitionId").GetString()!.Split("roles').")[1].TrimEnd(')', ']')));

    [Fact]
    public void TheAppHoldsLeastPrivilege()
    {
        var grants = AppRoleAssignments().ToList();
        // Owner only on the host's own account; never on the data account.
        var owner = Assert.Single(grants, g => g.Role == "storageBlobDataOwner");
        Assert.Contains("variables('hostAccountName')", owner.Scope);
        // Data: contributor on jobs and images only (the container loop stops before the model container), reader on the model.
        var contributor = Assert.Single(grants, g => g.Role == "storageBlobDataContributor");
        Assert.Contains("containers", contributor.Scope);
        Assert.Contains("[range(0, 2)[copyIndex()]]", contributor.Scope);
        var reader = Assert.Single(grants, g => g.Role == "storageBlobDataReader");
        Assert.EndsWith("parameters('modelContainerName'))[2])]", reader.Scope);
        // Queues one by one, and at account scope only the delegation key for image links.
        Assert.Contains("queueServices/queues", Assert.Single(grants, g => g.Role == "storageQueueDataContributor").Scope);
        var accountWide = grants.Where(g => g.Scope.StartsWith("[resourceId('Microsoft.Storage/storageAccounts', variables('dataAccountName'))")).Select(g => g.Role);
        Assert.Equal(["storageBlobDelegator"], accountWide);
    }

    [Fact]
    public void TelemetryGoesToApplicationInsightsWithTheAppsIdentityOnly()
    {
        var insights = Resource("Microsoft.Insights/components").GetProperty("properties");
        Assert.True(insights.GetProperty("DisableLocalAuth").GetBoolean()); // the key in the connection string is refused
        var settings = AppSettings();
        Assert.Contains("APPLICATIONINSIGHTS_CONNECTION_STRING", settings.Keys);
        // The worker's exporter reads the same setting the host does, and gets the managed identity from it.
        Assert.IsType<Azure.Identity.ManagedIdentityCredential>(TelemetrySetup.Credential(settings[TelemetrySetup.AuthenticationSetting]));
        Assert.Null(TelemetrySetup.Credential(null));
        Assert.Null(TelemetrySetup.Credential("Authorization=Key"));
        Assert.StartsWith("[resourceId('Microsoft.Insights/components'", Assert.Single(AppRoleAssignments(), g => g.Role == "monitoringMetricsPublisher").Scope);
    }

    [Fact]
    public void JobsAndImagesExpireAfterTheRetentionPeriod()
    {
        var rule = Assert.Single(Resource("Microsoft.Storage/storageAccounts/managementPolicies").GetProperty("properties").GetProperty("policy").GetProperty("rules").EnumerateArray());
        var defaults = new JobsOptions();
        Assert.Equal([$"{defaults.JobsContainer}/", $"{defaults.ImagesContainer}/"],
            rule.GetProperty("definition").GetProperty("filters").GetProperty("prefixMatch").EnumerateArray().Select(p => p.GetString()));
        Assert.Equal("[parameters('retentionDays')]",
            rule.GetProperty("definition").GetProperty("actions").GetProperty("baseBlob").GetProperty("delete").GetProperty("daysAfterModificationGreaterThan").GetString());
        Assert.Equal(7, Template.Value.GetProperty("parameters").GetProperty("retentionDays").GetProperty("defaultValue").GetInt32());
    }
}
