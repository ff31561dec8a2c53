namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// Loads a pipeline once and shares it: the first caller starts the load, concurrent callers wait for that
/// same load, later callers get the loaded pipeline at once. A failed load is not remembered: the next call
/// tries again, but is kept as <see cref="LastFailure"/> (for health) until a load succeeds. A caller's cancellation stops its own
/// wait, not the load others are waiting for.
/// </summary>
public sealed class PipelineHolder(Func<CancellationToken, Task<StableDiffusionPipeline>> load) : IDisposable
{
    private readonly Lock _lock = new();
    private Task<StableDiffusionPipeline>? _loading;
    private bool _disposed;

    /// <summary>How many loads have been started (for health reports and tests).</summary>
    public int LoadAttempts { get; private set; }

    public bool IsLoaded => _loading is { IsCompletedSuccessfully: true };

    /// <summary>A load is under way.</summary>
    public bool IsLoading => _loading is { IsCompleted: false };

    /// <summary>The last load's failure, until a load succeeds: what failed and when.</summary>
    public PipelineLoadFailure? LastFailure => Volatile.Read(ref _failure);
    private PipelineLoadFailure? _failure;

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
                _loading = Task.Run(() => LoadAsync());
            }
            loading = _loading;
        }
        return loading.WaitAsync(cancellationToken);
    }

    private async Task<StableDiffusionPipeline> LoadAsync()
    {
        try
        {
            var pipeline = await load(CancellationToken.None);
            Volatile.Write(ref _failure, null);
            return pipeline;
        }
        catch (Exception e)
        {
            Volatile.Write(ref _failure, new PipelineLoadFailure(e, DateTimeOffset.UtcNow));
            throw;
        }
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

/// <summary>A failed model load: the exception (for the logs; never shown to clients as it is) and when it happened.</summary>
public sealed record PipelineLoadFailure(Exception Error, DateTimeOffset Since);
