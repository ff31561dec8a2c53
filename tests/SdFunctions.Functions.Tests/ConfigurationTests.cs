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

    [Fact]
    public async Task TheAppProcessPrintsOneLineNamingAMissingStorageSetting()
    {
        var testDir = new DirectoryInfo(AppContext.BaseDirectory);
        string app = Path.Combine(AzuriteFixture.RepoRoot(), "functions", "SdFunctions.Functions", "bin", testDir.Parent!.Name, testDir.Name, "SdFunctions.Functions.dll");
        var start = new System.Diagnostics.ProcessStartInfo("dotnet", [app]) { RedirectStandardError = true, RedirectStandardOutput = true };
        start.Environment.Remove("JobsStorage");
        start.Environment["AzureWebJobsStorage"] = "UseDevelopmentStorage=true";
        using var process = System.Diagnostics.Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        var stdout = process.StandardOutput.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await process.WaitForExitAsync(timeout.Token);
        Assert.Equal(1, process.ExitCode);
        string[] lines = (await stderr).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("SdFunctions cannot start: JobsStorage is not set", Assert.Single(lines)[..48]);
        Assert.DoesNotContain("   at ", await stdout + await stderr); // no stack trace
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
