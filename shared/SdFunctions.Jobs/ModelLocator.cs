using System.Text.Json;
using Azure.Storage.Blobs;
using Microsoft.Extensions.Logging;
using SdFunctions.Inference.Bundle;

namespace SdFunctions.Jobs;

/// <summary>
/// Finds the model bundle for this instance: a local folder (e.g. an Azure Files mount), or a blob prefix
/// downloaded once into the instance's cache. A download counts only once every blob has arrived with its
/// listed size (recorded in a manifest written last); anything less is downloaded again.
/// </summary>
public sealed class ModelLocator(ModelOptions options, BlobServiceClient blobs, ILogger logger)
{
    private const string Manifest = ".sdfunctions-complete.json";

    public async Task<string> ResolveAsync(CancellationToken ct)
    {
        if (options.BundleDirectory is { } dir) return dir;
        if (options.BlobContainer is not { Length: > 0 } containerName)
            throw new ModelBundleException("No model configured: set Model__Directory (a local bundle folder) or Model__BlobContainer (and Model__BlobPrefix).");

        var container = blobs.GetBlobContainerClient(containerName);
        string prefix = options.BlobPrefix.Trim('/') is { Length: > 0 } p ? p + "/" : "";
        var listed = new Dictionary<string, long>(StringComparer.Ordinal);
        await foreach (var item in container.GetBlobsAsync(Azure.Storage.Blobs.Models.BlobTraits.None, Azure.Storage.Blobs.Models.BlobStates.None, prefix, ct))
            listed[item.Name[prefix.Length..]] = item.Properties.ContentLength ?? 0;
        if (listed.Count == 0) throw new ModelBundleException($"No blobs under '{containerName}/{prefix}': the model bundle is not uploaded there.");

        string target = Path.Combine(options.CacheFolder, "models", JobStore.Hash($"{container.Uri}/{prefix}")[..16]);
        if (IsComplete(target, listed)) return target;

        logger.LogInformation("Downloading the model bundle {Count} files from {Container}/{Prefix}", listed.Count, containerName, prefix);
        string staging = target + ".partial-" + Guid.NewGuid().ToString("N")[..8];
        try
        {
            foreach (var (name, size) in listed)
            {
                string file = Path.Combine(staging, name.Replace('/', Path.DirectorySeparatorChar));
                Directory.CreateDirectory(Path.GetDirectoryName(file)!);
                await container.GetBlobClient(prefix + name).DownloadToAsync(file, ct);
                long got = new FileInfo(file).Length;
                if (got != size) throw new ModelBundleException($"{containerName}/{prefix}{name}: downloaded {got} bytes, expected {size}.");
            }
            await File.WriteAllTextAsync(Path.Combine(staging, Manifest), JsonSerializer.Serialize(listed), ct);
            if (Directory.Exists(target)) Directory.Delete(target, recursive: true);
            Directory.Move(staging, target);
            return target;
        }
        finally
        {
            if (Directory.Exists(staging)) Directory.Delete(staging, recursive: true);
        }
    }

    private static bool IsComplete(string dir, Dictionary<string, long> listed)
    {
        string manifest = Path.Combine(dir, Manifest);
        if (!File.Exists(manifest)) return false;
        var recorded = JsonSerializer.Deserialize<Dictionary<string, long>>(File.ReadAllText(manifest));
        return recorded is not null && recorded.Count == listed.Count && listed.All(kv =>
            recorded.TryGetValue(kv.Key, out long size) && size == kv.Value
            && new FileInfo(Path.Combine(dir, kv.Key.Replace('/', Path.DirectorySeparatorChar))) is { Exists: true } f && f.Length == size);
    }
}
