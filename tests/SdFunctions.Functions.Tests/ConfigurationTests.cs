using Azure.Storage.Blobs;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging.Abstractions;
using SdFunctions.Inference.Bundle;
using Microsoft.Extensions.DependencyInjection;
using SdFunctions.Jobs;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>Where the model and the storage account come from.</summary>
[Collection(AzuriteCollection.Name)]
public class ConfigurationTests
{
    [Fact]
    public async Task ABundleUnderABlobPrefixIsDownloadedOnceAndRedownloadedWhenIncomplete()
    {
        var blobs = new BlobServiceClient(AzuriteFixture.ConnectionString);
        var container = blobs.GetBlobContainerClient("models-" + Guid.NewGuid().ToString("N")[..8]);
        await container.CreateAsync();
        try
        {
            foreach (string file in Directory.EnumerateFiles(AzuriteFixture.TinySd, "*", SearchOption.AllDirectories)
                         .Where(f => !f.Contains("unet-float-timestep") && !f.Contains("vae_encoder")))
                await container.GetBlobClient("sd/tiny/" + Path.GetRelativePath(AzuriteFixture.TinySd, file).Replace('\\', '/')).UploadAsync(file);

            string cache = Directory.CreateTempSubdirectory("sdf-model-cache-").FullName;
            var options = new ModelOptions { BlobContainer = container.Name, BlobPrefix = "sd/tiny", CacheDirectory = cache };
            var locator = new ModelLocator(options, blobs, NullLogger.Instance);

            string dir = await locator.ResolveAsync(default);
            var bundle = ModelBundle.Open(dir);
            Assert.Equal("sdref-tiny-sd", bundle.Name);

            var stamp = File.GetLastWriteTimeUtc(Path.Combine(dir, "unet", "model.onnx"));
            Assert.Equal(dir, await locator.ResolveAsync(default));
            Assert.Equal(stamp, File.GetLastWriteTimeUtc(Path.Combine(dir, "unet", "model.onnx"))); // not downloaded again

            File.Delete(Path.Combine(dir, "vae_decoder", "model.onnx")); // an instance's disk lost a file
            string again = await locator.ResolveAsync(default);
            Assert.True(File.Exists(Path.Combine(again, "vae_decoder", "model.onnx")));
            Directory.Delete(cache, true);
        }
        finally { await container.DeleteIfExistsAsync(); }
    }

    [Fact]
    public async Task TheApiReadsTheProfileBesideABlobBundleWithoutDownloadingTheModel()
    {
        var blobs = new BlobServiceClient(AzuriteFixture.ConnectionString);
        var container = blobs.GetBlobContainerClient("profiles-" + Guid.NewGuid().ToString("N")[..8]);
        await container.CreateAsync();
        try
        {
            // Only the profile is uploaded: a profile read from it cannot have come from the bundle's files.
            var profile = SdFunctions.Inference.Bundle.ModelProfile.Read(ModelBundle.Open(AzuriteFixture.TinyLcm));
            await container.GetBlobClient("lcm/" + SdFunctions.Inference.Bundle.ModelProfile.FileName).UploadAsync(BinaryData.FromBytes(profile.ToJson()));
            await using var app = await TestApp.StartAsync(configure: s =>
            {
                s.Remove("Model:Directory");
                s["Model:BlobContainer"] = container.Name;
                s["Model:BlobPrefix"] = "lcm";
            });
            var (refused, _) = await app.SubmitAsync("""{"prompt": "a cat", "negativePrompt": "blurry"}""");
            Assert.Contains("negative prompt", AssertProblem(refused, 400, ProblemTypes.Validation).GetProperty("errors").GetProperty("negativePrompt")[0].GetString());
            var read = app.Services.GetRequiredService<ModelProfiles>().Current!;
            Assert.Equal((profile.Model, 256, 256, true), (read.Model, read.Width, read.Height, read.GuidanceDistilled)); // at the service's size
            Assert.False(Directory.Exists(Path.Combine(app.CacheDirectory, "models", JobStore.Hash($"{container.Uri}/lcm/")[..16]))); // nothing downloaded
        }
        finally { await container.DeleteIfExistsAsync(); }
    }

    [Fact]
    public async Task AnEmptyPrefixOrNoModelSettingIsAClearError()
    {
        var blobs = new BlobServiceClient(AzuriteFixture.ConnectionString);
        var none = new ModelLocator(new ModelOptions(), blobs, NullLogger.Instance);
        var e1 = await Assert.ThrowsAsync<ModelBundleException>(() => none.ResolveAsync(default));
        Assert.Contains("Model__Directory", e1.Message);

        var container = blobs.GetBlobContainerClient("empty-" + Guid.NewGuid().ToString("N")[..8]);
        await container.CreateAsync();
        try
        {
            var empty = new ModelLocator(new ModelOptions { BlobContainer = container.Name, BlobPrefix = "nothing" }, blobs, NullLogger.Instance);
            var e2 = await Assert.ThrowsAsync<ModelBundleException>(() => empty.ResolveAsync(default));
            Assert.Contains("not uploaded", e2.Message);
        }
        finally { await container.DeleteIfExistsAsync(); }
    }

    [Fact]
    public void IdentityBasedStorageSettingsPointAtTheAccount()
    {
        using var services = Registered(new()
        {
            ["JobsStorage:accountName"] = "sdfprod",
            ["JobsStorage:credential"] = "managedidentity",
        });
        var blobs = services.GetRequiredService<BlobServiceClient>();
        var queues = services.GetRequiredService<Azure.Storage.Queues.QueueServiceClient>();
        Assert.Equal(new Uri("https://sdfprod.blob.core.windows.net"), blobs.Uri);
        Assert.Equal(new Uri("https://sdfprod.queue.core.windows.net"), queues.Uri);
        Assert.False(blobs.CanGenerateAccountSasUri); // no key: image links use a user-delegation SAS

        using var byUri = Registered(new()
        {
            ["JobsStorage:blobServiceUri"] = "https://blobs.example.test", ["JobsStorage:queueServiceUri"] = "https://queues.example.test",
        });
        Assert.Equal(new Uri("https://blobs.example.test"), byUri.GetRequiredService<BlobServiceClient>().Uri);
        Assert.Equal(new Uri("https://queues.example.test"), byUri.GetRequiredService<Azure.Storage.Queues.QueueServiceClient>().Uri);
    }

    [Fact]
    public void WithoutJobsStorageTheAppDoesNotStartEvenWhenTheHostsAccountIsSet()
    {
        // The queue triggers read JobsStorage: an app that fell back to AzureWebJobsStorage would accept jobs that never run.
        var e = Assert.Throws<SettingsException>(() => Registered(new() { ["AzureWebJobsStorage"] = AzuriteFixture.ConnectionString }));
        Assert.StartsWith("JobsStorage is not set", e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.Throws<SettingsException>(() => Registered(new() { ["JobsStorage:credential"] = "managedidentity" })); // no account named
    }

    /// <summary>Each setting the app cannot run with, and the start of the one line it prints for it.</summary>
    public static TheoryData<string, string, string> BadSettings() => new()
    {
        { "JobsStorage", "", "JobsStorage is not set" }, // only AzureWebJobsStorage: the triggers could not run
        { "Jobs__QueueName", "other-queue", "Jobs__QueueName is 'other-queue' but the queue trigger listens on 'generations'" },
        { "Webhooks__QueueName", "hooks", "Webhooks__QueueName is 'hooks' but the queue trigger listens on 'webhooks'" },
        { "Webhooks__SigningSecret", "whsec_not base64!", "Webhooks__SigningSecret is not base64 after whsec_" },
        { "Webhooks__SigningSecret", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "Webhooks__SigningSecret does not start with whsec_" },
        { "Webhooks__SigningSecret", "whsec_AAAA", "Webhooks__SigningSecret holds 3 bytes" },
        { "Model__Directory", "/no/such/bundle", "Model__Directory: /no/such/bundle does not exist" },
        { "Model__Directory", "/tmp", "Model__Directory: /tmp holds no model bundle" },
        { "Jobs__Width", "300", "Jobs__Width is 300: the image side must be a multiple of 64" },
        { "Jobs__Width", "4096", "Jobs__Width is 4096: the image side must be a multiple of 64 from 64 to 2048" },
        { "Jobs__MaxRequestBytes", "-1", "Jobs__MaxRequestBytes is -1" },
        { "Model__DefaultDecoder", "fast", "Model__DefaultDecoder is 'fast'" },
    };

    [Theory, MemberData(nameof(BadSettings))]
    public async Task TheAppProcessPrintsOneLineNamingABadSetting(string setting, string value, string expected)
    {
        var testDir = new DirectoryInfo(AppContext.BaseDirectory);
        string app = Path.Combine(AzuriteFixture.RepoRoot(), "functions", "SdFunctions.Functions", "bin", testDir.Parent!.Name, testDir.Name, "SdFunctions.Functions.dll");
        var start = new System.Diagnostics.ProcessStartInfo("dotnet", [app]) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string name in start.Environment.Keys.Where(k => k.StartsWith("Jobs", StringComparison.Ordinal) || k.StartsWith("Model__") || k.StartsWith("Webhooks__")).ToList())
            start.Environment.Remove(name);
        start.Environment["AzureWebJobsStorage"] = "UseDevelopmentStorage=true";
        start.Environment["JobsStorage"] = "UseDevelopmentStorage=true"; // never contacted: the app stops before it uses storage
        start.Environment["Model__Directory"] = AzuriteFixture.TinySd;
        if (value.Length == 0) start.Environment.Remove(setting);
        else start.Environment[setting] = value;
        using var process = System.Diagnostics.Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        var stdout = process.StandardOutput.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await process.WaitForExitAsync(timeout.Token);
        Assert.Equal(1, process.ExitCode);
        string line = Assert.Single((await stderr).Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"SdFunctions cannot start: {expected}", line);
        Assert.DoesNotContain("   at ", await stdout + await stderr); // no stack trace
        if (setting == "Webhooks__SigningSecret") Assert.DoesNotContain(value, line); // a secret is never printed
    }

    [Fact]
    public void AnImageSizeTheMachineCannotHoldIsRefusedAtStartWithTheMemoryItNeeds()
    {
        using var services = Registered(new() { ["JobsStorage"] = AzuriteFixture.ConnectionString, ["Model:Directory"] = AzuriteFixture.TinySd, ["Jobs:Width"] = "2048", ["Jobs:Height"] = "2048" });
        var e = Assert.Throws<Microsoft.Extensions.Options.OptionsValidationException>(() => SettingsValidation.ValidateAll(services));
        Assert.Contains("Jobs__Width × Jobs__Height: 2048×2048 needs about", e.Message);
        Assert.Contains("this machine has", e.Message);
    }

    private static ServiceProvider Registered(Dictionary<string, string?> settings)
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(settings).Build();
        return new ServiceCollection().AddLogging().AddGenerationJobs(configuration).BuildServiceProvider();
    }

    [Fact]
    public void TheExampleSettingsWorkAsTheyAre()
    {
        string path = Path.Combine(AzuriteFixture.RepoRoot(), "local.settings.json.example");
        var values = System.Text.Json.JsonDocument.Parse(File.ReadAllText(path)).RootElement.GetProperty("Values");
        Assert.Equal("UseDevelopmentStorage=true", values.GetProperty("AzureWebJobsStorage").GetString());
        Assert.Equal("UseDevelopmentStorage=true", values.GetProperty(JobsServiceCollectionExtensions.StorageSetting).GetString()); // the queue trigger's connection
        Assert.Equal("dotnet-isolated", values.GetProperty("FUNCTIONS_WORKER_RUNTIME").GetString());
        // The model path is relative to the app's build output (functions/SdFunctions.Functions/bin/<cfg>/<tfm>).
        var testDir = new DirectoryInfo(AppContext.BaseDirectory);
        string output = Path.Combine(AzuriteFixture.RepoRoot(), "functions", "SdFunctions.Functions", "bin", testDir.Parent!.Name, testDir.Name);
        string model = Path.GetFullPath(Path.Combine(output, values.GetProperty("Model__Directory").GetString()!));
        var bundle = ModelBundle.Open(model); // the bundled tiny-shapes model, at its native size
        Assert.Equal("sdref-tiny-shapes", bundle.Name);
        Assert.Equal((bundle.DefaultWidth.ToString(), bundle.DefaultHeight.ToString()), (values.GetProperty("Jobs__Width").GetString(), values.GetProperty("Jobs__Height").GetString()));
    }
}

[Collection(AzuriteCollection.Name)]
public class StartupTests
{
    [Fact]
    public async Task StartingTheAppCreatesItsQueuesAndPrivateContainers()
    {
        await using var app = await TestApp.StartAsync();
        Assert.True(await app.Messages.ExistsAsync());
        Assert.True(await app.Poison.ExistsAsync());
        Assert.True(await app.Images.ExistsAsync());
        Assert.Equal(Azure.Storage.Blobs.Models.PublicAccessType.None, (await app.Images.GetPropertiesAsync()).Value.PublicAccess ?? default);
        var jobs = app.Services.GetRequiredService<Azure.Storage.Blobs.BlobServiceClient>().GetBlobContainerClient(app.Options.JobsContainer);
        Assert.Equal(Azure.Storage.Blobs.Models.PublicAccessType.None, (await jobs.GetPropertiesAsync()).Value.PublicAccess ?? default);
    }
}
