namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// Loads a pipeline once and shares it: the first caller starts the load, concurrent callers wait for that
/// same load, later callers get the loaded pipeline at once. A failed load is not remembered: the next call
/// tries again. A caller's cancellation stops its own wait, not the load others are waiting for.
/// </summary>
public sealed class PipelineHolder(Func<CancellationToken, Task<StableDiffusionPipeline>> load) : IDisposable
{
    private readonly Lock _lock = new();
    private Task<StableDiffusionPipeline>? _loading;
    private bool _disposed;

    /// <summary>How many loads have been started (for health reports and tests).</summary>
    public int LoadAttempts { get; private set; }

    public bool IsLoaded => _loading is { IsCompletedSuccessfully: true };

    /// <summary>The pipeline if it has been loaded, without starting a load (for health reports).</summary>
    public StableDiffusionPipeline? Loaded => _loading is { IsCompletedSuccessfully: true } done ? done.Result : null;

    public Task<StableDiffusionPipeline> GetAsync(CancellationToken cancellationToken = default)
    {
        Task<StableDiffusionPipeline> loading;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_loading is null || _loading.IsFaulted || _loading.IsCanceled)
            {
                LoadAttempts++;
                _loading = Task.Run(() => load(CancellationToken.None));
            }
            loading = _loading;
        }
        return loading.WaitAsync(cancellationToken);
    }

    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
            // A load still running is disposed when it finishes.
            _loading?.ContinueWith(static t => t.Result.Dispose(), TaskContinuationOptions.OnlyOnRanToCompletion);
        }
    }
}
